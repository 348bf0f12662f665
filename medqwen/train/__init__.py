"""Training stages beyond SFT.

    dpo_config.py       DpoConfig (trainer/train_dpo.py) and PreferenceDataConfig (data/prepare_preference.py)
    preference_data.py  preference pairs in the layouts users have -> one validated, de-duplicated JSONL layout
    dpo.py              DPO / ORPO with LoRA over TRL's DPOTrainer, our template's assistant span as the completion
"""
