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

from medqwen.cli import run_script
from medqwen.data import prepare
from medqwen.data.config import DataConfig


def main(cfg: DataConfig) -> dict:
    """Run the preparation; returns the stats dict (also written to <stem>.stats.json)."""
    return prepare(cfg)


if __name__ == "__main__":
    run_script(DataConfig, main, description=__doc__)
