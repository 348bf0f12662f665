"""JSONL in and out: one JSON object per line, errors that name file and line, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator


def iter_jsonl_objects(path: str | Path, text: str | None = None,
                       error: type[Exception] = ValueError) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a bad line raises `error("path:line: what is wrong")`."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno}); fix or remove the line") \
                from None
        if not isinstance(record, dict):
            raise error(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield lineno, record


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line (UTF-8, Chinese unescaped), written atomically: a killed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: ranks may write the same file
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
