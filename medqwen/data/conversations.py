"""The prepared conversations read back (validated like any input) and split into training and held-out sets, the
same way for the trainer, the evaluator and the benchmarks."""

from __future__ import annotations

import random
from pathlib import Path

from medqwen.data.config import DataConfig
from medqwen.data.prepare import InputSpec, load_file
from medqwen.data.readers import DataError


def read_conversations(path: str | Path) -> list[dict]:
    """Conversations (`{"conversations": [...], "tools"?: [...]}`) from JSONL, validated by medqwen.data.

    `conversations` or `messages` (and the other formats data/prepare_data.py converts) are accepted; a bad
    line raises medqwen.data.DataError with "path:line: what is wrong".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data '{path}' not found. Prepare it first (docs/data.md):\n"
                                f"  python data/prepare_data.py --output {path}")
    conversations = load_file(InputSpec(path), DataConfig()).conversations
    if not conversations:
        raise DataError(f"{path}: no conversations found")
    return conversations


def split_conversations(conversations: list, eval_ratio: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then hold out `eval_ratio` of the conversations (at least one when ratio > 0)."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if eval_ratio <= 0 else max(1, round(len(order) * eval_ratio))
    if n_eval >= len(order):
        raise DataError(f"eval_ratio {eval_ratio} leaves no training data ({len(order)} conversations)")
    return [conversations[i] for i in order[n_eval:]], [conversations[i] for i in order[:n_eval]]
