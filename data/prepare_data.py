"""Prepare LoRA training data: convert, validate, render identity, de-duplicate, filter by length, merge.

    # the demo: team-written medical sample + identity conversations (placeholders filled), bundled tokenizer
    python data/prepare_data.py --input data/medical_sample.jsonl --identity data/lora_identity.jsonl \
        --tokenizer model/smollm2-135m-instruct --output out/demo/data/lora_medical_merged.jsonl

    # the original recipe: a real corpus (docs/data.md) merged with identity data upsampled 3x
    python data/prepare_data.py --input data/lora_medical.jsonl --identity data/lora_identity.jsonl:3 \
        --name MedQwen --author "Your Lab" --output data/lora_medical_merged.jsonl

    # convert department CSVs (GB18030) and ShareGPT/Alpaca/QA files into one file; skip and count bad records
    python data/prepare_data.py --input Chinese-medical-dialogue-data/ --input medical_sft.jsonl:2 \
        --skip_invalid --output data/lora_medical.jsonl --no-shuffle

Writes the output JSONL and, beside it, <stem>.stats.json (counts in/out/dropped by reason per input, token
length percentiles), <stem>.length_hist.png and <stem>.config.yaml; prints a Markdown summary.
"""

from medqwen.configlib import UserError, parse_config, run_main
from medqwen.data import DataError, prepare
from medqwen.data_config import DataConfig


def main(cfg: DataConfig) -> dict:
    """Run the preparation; returns the stats dict (also written to <stem>.stats.json)."""
    return prepare(cfg)


def cli() -> None:
    cfg = parse_config(DataConfig, description=__doc__)
    try:
        main(cfg)
    except DataError as err:
        if err.reason == "unknown_format" or err.detail.startswith("no record"):  # skipping would not help
            raise UserError(str(err)) from None
        raise UserError(f"{err}\nFix that record, or pass --skip_invalid to skip invalid records and count them "
                        f"by reason (nothing valid is dropped).") from None
    except (OSError, ValueError) as err:  # a missing input, --output on a folder, ...: the user's to fix
        raise UserError(str(err)) from None


if __name__ == "__main__":
    run_main(cli)
