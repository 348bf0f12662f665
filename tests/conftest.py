"""Shared fixtures: the bundled SmolLM2 folder and a tiny random Qwen3 that uses its tokenizer."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO / "model" / "smollm2-135m-instruct"
QWEN_REFERENCE = REPO.parent / "shared" / "reference" / "qwen3"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs the bundled model or a real server (CI still runs it)")


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    if not (BUNDLED_MODEL / "config.json").is_file():
        pytest.fail(f"{BUNDLED_MODEL} missing: run `make setup` (it converts the bundled SmolLM2 once)")
    return BUNDLED_MODEL


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_dir) -> Path:
    """A tiny random Qwen3ForCausalLM (2 layers, head_dim 32) with the SmolLM2 tokenizer and our template."""
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"), bundled_model_dir)


def save_tiny_qwen3(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random Qwen3 with a real tokenizer (and our chat template) as an HF folder."""
    from medqwen.chat import load_tokenizer
    from medqwen.modeling import random_qwen3

    tokenizer = load_tokenizer(tokenizer_dir)
    model = random_qwen3("tiny", vocab_size=len(tokenizer), seed=seed,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def qwen_reference_dir() -> Path:
    if not (QWEN_REFERENCE / "vocab.json").is_file():
        pytest.skip(f"Qwen3 reference files not found at {QWEN_REFERENCE}")
    return QWEN_REFERENCE
