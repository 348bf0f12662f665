"""JSONL in and out: one JSON object per line, errors that name file and line, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator


def iter_jsonl_objects(path: str | Path, text: str | None = None, error: type[Exception] = ValueError,
                       skipped: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a bad line raises `error("path:line: what is wrong")`,
    or, when a `skipped` list is given, is appended to it as that message and skipped (one bad line then costs
    only itself)."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.split("\n"), start=1):  # "\n" only: U+2028 inside a string is no line end
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
        except json.JSONDecodeError as err:
            problem = f"invalid JSON ({err.msg} at column {err.colno}); fix or remove the line"
        except RecursionError:
            problem = "JSON nested too deeply"
        if problem is None:
            yield lineno, record
        elif skipped is None:
            raise error(f"{path}:{lineno}: {problem}") from None
        else:
            skipped.append(f"{path}:{lineno}: {problem}")


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line (UTF-8, Chinese unescaped), written atomically: a killed run leaves no half file,
    a failed one (an unencodable row, a folder in the way) leaves neither a .tmp nor a changed `path`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name, e.g. {path / 'data.jsonl'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: ranks may write the same file
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a small file (config, stats) atomically: readers see the old or the new version, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
