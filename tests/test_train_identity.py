"""Behaviour on a real model: a few LoRA steps on the shipped identity data teach the bundled SmolLM2 its name.

The probes (medqwen.data.IDENTITY_PROBES, 5 English + 5 Chinese) never occur in the identity data, so a hit
means the identity generalised, not that a training line was replayed.
"""

from pathlib import Path

import pytest

from medqwen.data import IDENTITY_PROBES, InputSpec, load_file
from medqwen.data.config import DataConfig
from medqwen.evaluate.metrics import names_assistant
from medqwen.evaluate.run import generate_hf
from medqwen.jsonl import write_jsonl
from medqwen.train.config import TrainConfig
from medqwen.train.sft import train

REPO = Path(__file__).resolve().parent.parent
# An author that does not contain the name, so a reply naming only the author is not counted as a hit.
NAME, AUTHOR = "MedQwen", "the open-source community"
# The demo preset's rate and rank (configs/smollm2/lora_cpu_demo.yaml), 4 conversations of <= 128 tokens per step
# to keep it cheap on CPU (docs/training.md lists the step counts and hit rates measured).
STEPS, LEARNING_RATE, RANK, BATCH, MAX_LEN = 10, 2e-3, 16, 4, 128


def ask_probes(model, tokenizer) -> list[str]:
    return generate_hf(model, tokenizer, [[{"role": "user", "content": q}] for q in IDENTITY_PROBES],
                       max_new_tokens=24, batch_size=len(IDENTITY_PROBES))


@pytest.mark.slow
def test_lora_teaches_the_configured_name(bundled_model_dir, tmp_path):
    from medqwen.chat import load_tokenizer
    from medqwen.modeling import load_model

    identity = load_file(InputSpec(REPO / "data" / "lora_identity.jsonl", identity=True),
                         DataConfig(name=NAME, author=AUTHOR)).conversations
    write_jsonl(identity, tmp_path / "identity.jsonl")
    cfg = TrainConfig(model=str(bundled_model_dir), data_path=str(tmp_path / "identity.jsonl"),
                      output_dir=str(tmp_path / "lora"), max_steps=STEPS, learning_rate=LEARNING_RATE,
                      lr_scheduler_type="constant", lora_r=RANK, lora_alpha=2 * RANK, per_device_train_batch_size=BATCH,
                      gradient_accumulation_steps=1, max_seq_len=MAX_LEN, eval_ratio=0, logging_steps=5,
                      report_to="none")
    train(cfg)

    tokenizer = load_tokenizer(bundled_model_dir)
    before = ask_probes(load_model(bundled_model_dir, device="cpu"), tokenizer)
    after = ask_probes(load_model(bundled_model_dir, adapter=cfg.output_dir, device="cpu"), tokenizer)
    for probe, old, new in zip(IDENTITY_PROBES, before, after):
        print(f"{probe}\n  base: {old!r}\n  lora: {new!r}")
    hits_before = sum(names_assistant(reply, NAME) for reply in before)
    hits_after = sum(names_assistant(reply, NAME) for reply in after)
    print(f"names itself {NAME}: base {hits_before}/10, LoRA ({STEPS} steps) {hits_after}/10")
    assert hits_before == 0
    assert hits_after >= 8
