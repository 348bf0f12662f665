"""Prepare preference pairs for DPO/ORPO: read MedicalGPT or TRL layouts, validate, escape control tokens,
de-duplicate, filter by length, merge.

    # the shipped team-written sample (MedicalGPT layout) with the bundled tokenizer
    python data/prepare_preference.py --input data/medical_preference_sample.jsonl \
        --tokenizer model/smollm2-135m-instruct --output out/demo/data/medical_preference.jsonl

    # your own files, any mix of layouts; skip and count bad pairs instead of stopping at the first
    python data/prepare_preference.py --input dpo_zh.jsonl --input trl_pairs.jsonl --skip_invalid \
        --output data/medical_preference.jsonl

Writes the output JSONL (TRL's conversational prompt/chosen/rejected) and, beside it, <stem>.stats.json (read,
kept, dropped by reason per input, token-length percentiles) and <stem>.config.yaml; prints a Markdown summary.
"""

from medqwen.cli import run_script
from medqwen.train.dpo_config import PreferenceDataConfig
from medqwen.train.preference_data import prepare_preferences


def main(cfg: PreferenceDataConfig) -> dict:
    """Run the preparation; returns the stats dict (also written to <stem>.stats.json)."""
    return prepare_preferences(cfg)


if __name__ == "__main__":
    run_script(PreferenceDataConfig, main, description=__doc__)
