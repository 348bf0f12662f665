"""Training: LoRA SFT, GRPO on verifiable multiple-choice rewards, preference training (DPO/ORPO), and merging
adapters (TRL trainers + PEFT).

    sft.py              the SFT stage: SFTTrainer construction, then the run (split, train, save, report)
    common.py           what SFT, GRPO and DPO share: base model, LoRA config, TrainingArguments, atomic
                        checkpoints, resume, adapter saves, run logging
    merge.py            an adapter merged into its base and saved as a standalone model folder
    config.py           TrainConfig, GrpoConfig, MergeConfig, McqConvertConfig and the fields they share
    grpo.py             GRPO over TRL's GRPOTrainer, rewards read with the exam scorer
    dpo.py              DPO / ORPO with LoRA over TRL's DPOTrainer, our template's assistant span as the reply
    dpo_config.py       DpoConfig (trainer/train_dpo.py) and PreferenceDataConfig (data/prepare_preference.py)
    preference_data.py  preference pairs in the layouts users have -> one validated, de-duplicated JSONL layout
    rollouts.py         GRPO rollouts without vLLM (one CUDA graph per decode step, or a compiled static cache)
    mcq.py              multiple-choice questions with known answers: GRPO's data
    fast_path.py        the fast path's settings, exact-batch collator and torch settings (kernels in medqwen.kernels)
    callbacks.py        one dense log line per logging step

Imports run one way: this package uses medqwen.kernels, medqwen.exams and the top level, never the reverse.
"""
