"""Reading data files: bytes -> text in the detected encoding -> records (JSON Lines, JSON, CSV) with line numbers.

The reference for CSV is Python's `csv.reader` (Excel's reading): a quote opens a quoted field only at the start
of a field; anywhere else it is a character. What `csv.reader` reads as a row of the header's width is a row.
Only a quote that opens a field and never closes (or closes into a row of the wrong width) is taken for a stray:
that one line is reported and reading starts again on the next line, so it never swallows the rows after it.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from medqwen.configlib import UserError

CSV_SUFFIXES = (".csv", ".tsv")
DATA_SUFFIXES = (".jsonl", ".json") + CSV_SUFFIXES
MAX_CSV_RECORD_LINES = 1000  # a quoted CSV field still open after this many lines is taken for a stray quote
ENCODINGS = ["auto", "utf-8", "utf-8-sig", "gb18030", "gbk", "utf-16", "utf-16-le", "utf-16-be"]
_BOMS = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


class RecordError(ValueError):
    """A record that cannot be used; `reason` is one of INVALID_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class DataError(UserError):
    """Bad input, located: the message reads `path:line: what is wrong`."""

    def __init__(self, path: str | Path, line: int, reason: str, detail: str):
        super().__init__(f"{path}:{line}: {detail}")
        self.path, self.line, self.reason, self.detail = str(path), line, reason, detail


# ----------------------------------------------------------------------------------------------------------
# Bytes -> lines.


def detect_encoding(raw_lines: list[bytes]) -> str:
    """'utf-8' or 'gb18030' (a superset of GBK and GB2312), by which one decodes the non-ASCII lines.

    UTF-8 when every such line is valid UTF-8; else GB18030 when every one is valid GB18030; else the majority:
    UTF-8 when at least half are valid UTF-8, so a few corrupt lines of a UTF-8 file cost only themselves. Chinese
    text in GB18030 is almost never valid UTF-8, and UTF-8 Chinese text is rarely valid GB18030 line after line;
    only a few characters of GB18030 can be both (`头` is CD B7, also UTF-8's `ͷ`): such a file reads as UTF-8,
    and `--encoding gb18030` reads it as written.
    """
    non_ascii = [line for line in raw_lines if not line.isascii()]
    utf8_ok = sum(_decodes(line, "utf-8") for line in non_ascii)
    if utf8_ok == len(non_ascii):
        return "utf-8"  # the common case: no second pass over the file
    if all(_decodes(line, "gb18030") for line in non_ascii):
        return "gb18030"
    return "utf-8" if 2 * utf8_ok >= len(non_ascii) else "gb18030"


def _decodes(line: bytes, encoding: str) -> bool:
    try:
        line.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False


def _utf16_without_bom(raw: bytes) -> str | None:
    """'utf-16-le'/'utf-16-be' when the bytes look like UTF-16 without a BOM (ASCII-range characters leave a NUL
    in every other byte), else None."""
    sample = raw[:4096]
    if len(sample) < 4 or b"\x00" not in sample:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if odd > 0.3 * len(sample) / 2 and even == 0:
        return "utf-16-le"
    if even > 0.3 * len(sample) / 2 and odd == 0:
        return "utf-16-be"
    return None


def split_lines(text: str) -> list[str]:
    """Lines with their endings, split on \\n, \\r\\n and \\r only: what csv.reader sees from a file opened with
    newline='' (str.splitlines would also split on U+2028, U+0085, form feeds... inside the text)."""
    return io.StringIO(text, newline="").readlines()


def read_lines(path: Path, encoding: str = "auto") -> tuple[str, list[str], set[int]]:
    """(encoding, decoded lines with their endings, 1-based numbers of lines that did not decode).

    ASCII-compatible encodings (UTF-8, GB18030) are decoded line by line, so one corrupt line costs only itself;
    UTF-16 is decoded whole before it is split into lines (its newline bytes are two bytes wide).
    """
    raw = path.read_bytes()
    if encoding == "auto":
        encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), None) or _utf16_without_bom(raw) \
            or "auto"
    if encoding.replace("_", "-").lower().startswith("utf-16"):
        try:
            text = raw.decode(encoding)
            bad_text = None
        except UnicodeDecodeError:
            text, bad_text = raw.decode(encoding, errors="replace"), True
        label = encoding + ("" if encoding != "utf-16" else ("-le" if raw.startswith(codecs.BOM_UTF16_LE) else
                                                                  "-be" if raw.startswith(codecs.BOM_UTF16_BE) else ""))
        if encoding == "utf-16" and raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            label += "-sig"
        lines = split_lines(text.removeprefix("\ufeff"))
        bad = {n for n, line in enumerate(lines, 1) if bad_text and "\ufffd" in line}
        return label, lines, bad
    bom = raw.startswith(codecs.BOM_UTF8)
    if bom:
        raw = raw[3:]
    raw_lines = raw.splitlines(keepends=True)  # bytes split on \n, \r\n and \r only, like split_lines
    if encoding in ("auto", "utf-8-sig"):
        encoding = "utf-8" if bom or encoding == "utf-8-sig" else detect_encoding(raw_lines)
    lines, bad = [], set()
    for number, line in enumerate(raw_lines, 1):
        try:
            lines.append(line.decode(encoding))
        except UnicodeDecodeError:
            bad.add(number)
            lines.append(line.decode(encoding, errors="replace"))  # kept only to find record boundaries
    return encoding + ("-sig" if bom else ""), lines, bad


def encoding_error(encoding: str, start: int, lines: set[int]) -> RecordError:
    where = "" if lines == {start} else f"line(s) {sorted(lines)} of this record: "
    return RecordError("encoding", f"{where}not valid {encoding} text (the encoding was detected from the whole "
                                   f"file; pass --encoding to force one)")


# ----------------------------------------------------------------------------------------------------------
# JSON Lines and JSON.


def iter_jsonl(lines: list[str], bad: set[int], encoding: str) -> Iterator[tuple[int, Any]]:
    """One JSON object per non-blank line."""
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        if number in bad:
            yield number, encoding_error(encoding, number, {number})
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            yield number, RecordError("invalid_json", f"invalid JSON: {err.msg} (column {err.colno})")
            continue
        yield number, value if isinstance(value, dict) else RecordError(
            "invalid_json", f"expected a JSON object per line, got {type(value).__name__}")


def _skip_space(text: str, offset: int) -> int:
    while offset < len(text) and text[offset] in " \t\r\n":
        offset += 1
    return offset


def iter_json_values(text: str, bad: set[int], encoding: str, path: Path, pos: int = 0,
                     array: bool = False) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON array (array=True, `pos` just after '['), or JSON objects one after another
    (pretty-printed JSON Lines), each with the line it starts on."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    pos = _skip_space(text, pos)
    if array and pos < len(text) and text[pos] == "]":
        return
    while pos < len(text):
        start = line_at(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            # Inside a broken array we cannot find the next element reliably: stop here, with the location.
            raise DataError(path, err.lineno, "invalid_json",
                            f"invalid JSON{' array' if array else ''}: {err.msg} (column {err.colno})")
        spanned = set(range(start, start + text.count("\n", pos, end) + 1)) & bad
        if spanned:
            yield start, encoding_error(encoding, start, spanned)
        elif not isinstance(value, dict):
            yield start, RecordError("invalid_json", f"expected a JSON object, got {type(value).__name__}")
        else:
            yield start, value
        pos = _skip_space(text, end)
        if not array:
            continue
        if pos < len(text) and text[pos] == ",":
            pos = _skip_space(text, pos + 1)
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            raise DataError(path, line_at(pos), "invalid_json", "invalid JSON array: expected ',' or ']'")


def _wrapped_list(value: dict) -> list | None:
    """The record list of a JSON object that wraps one (`{"data": [{...}, ...]}`, `{"instances": [...]}`)."""
    lists = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    return lists[0] if len(lists) == 1 and len(value) <= 3 else None


def iter_json(lines: list[str], bad: set[int], encoding: str, path: Path) -> Iterator[tuple[int, Any]]:
    """A .json file: an array of objects, one object (or one wrapping a list of records), or, as many releases
    ship it, JSON Lines or pretty-printed objects one after another under a .json name."""
    text = "".join(lines)
    pos = _skip_space(text, 0)
    if text.startswith("[", pos):
        yield from iter_json_values(text, bad, encoding, path, pos + 1, array=True)
        return
    first = next((t for t in lines if t.strip()), "")
    try:
        json.loads(first)
        one_per_line = True
    except json.JSONDecodeError:
        one_per_line = False
    if one_per_line:
        yield from iter_jsonl(lines, bad, encoding)
        return
    values = list(iter_json_values(text, bad, encoding, path, pos))
    if len(values) == 1 and isinstance(values[0][1], dict) and (wrapped := _wrapped_list(values[0][1])):
        yield from ((values[0][0], item) for item in wrapped)
        return
    yield from values


# ----------------------------------------------------------------------------------------------------------
# CSV.


def _ends_inside_quotes(text: str, delimiter: str) -> bool:
    """Whether a CSV record text ends inside a quoted field (csv.reader's state machine, non-strict)."""
    in_quotes, field_start, i = False, True, 0
    while i < len(text):
        c = text[i]
        if in_quotes:
            if c == '"':
                if text.startswith('"', i + 1):
                    i += 1  # a doubled quote is a quote character
                else:
                    in_quotes, field_start = False, False
        elif c == '"' and field_start:
            in_quotes = True
        elif c == delimiter or c in "\r\n":
            field_start = True
        else:
            field_start = False
        i += 1
    return in_quotes


class _Lines:
    """The lines from `start` on, for csv.reader; stops early (`cut`) when one record runs past
    MAX_CSV_RECORD_LINES lines, so a stray quote costs a bounded read."""

    def __init__(self, lines: list[str], start: int):
        self.lines, self.next, self.record_start, self.cut = lines, start, start, False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.next >= len(self.lines):
            raise StopIteration
        if self.next - self.record_start >= MAX_CSV_RECORD_LINES:
            self.cut = True
            raise StopIteration
        self.next += 1
        return self.lines[self.next - 1]


def csv_delimiter(path: Path, header_line: str) -> str:
    """',' for .csv; a tab for .tsv, or for a header line with tabs and no comma (Excel's "Unicode text")."""
    if path.suffix.lower() == ".tsv" or ("\t" in header_line and "," not in header_line):
        return "\t"
    return ","


def iter_csv(lines: list[str], bad: set[int], encoding: str, path: Path) -> Iterator[tuple[int, Any]]:
    """CSV rows as dicts keyed by the (lower-cased) header, read by csv.reader; quoted fields may span lines.

    A multi-line record that csv.reader reads as a row of the header's width is a row. One that ends inside a
    quoted field, runs past MAX_CSV_RECORD_LINES lines, or has the wrong width is a stray quote: only its first
    line is reported, and reading starts again on the next line.
    """
    csv.field_size_limit(2**31 - 1)  # the default (128K characters) rejects long answers
    first = next((t for t in lines if t.strip()), "")
    delimiter = csv_delimiter(path, first)
    header: list[str] | None = None
    i = 0
    while i < len(lines):
        source = _Lines(lines, i)
        reader = csv.reader(source, delimiter=delimiter)
        restart = None
        for row in reader:
            start, end = source.record_start, source.next  # 0-based first line, one past the last line
            source.record_start = end
            stray = source.cut or (end == len(lines) and end - start > 0
                                   and _ends_inside_quotes("".join(lines[start:end]), delimiter))
            if header is None:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if stray or end - start > 1:
                    raise DataError(path, start + 1, "malformed_csv", "malformed CSV header: a quote opened in the "
                                                                      "header never closes on its line")
                header = [h.strip().lstrip("\ufeff").lower() for h in row]
                continue
            if not stray and len(row) != len(header) and end - start > 1:
                stray = True
            if stray:
                yield start + 1, RecordError(
                    "malformed_csv", "unbalanced quote: a quote that opens a field here never closes into a row of "
                                     f"{len(header)} columns (a stray \"?); the line is skipped, reading goes on")
                restart = start + 1
                break
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            spanned = set(range(start + 1, end + 1)) & bad
            if spanned:
                yield start + 1, encoding_error(encoding, start + 1, spanned)
            elif len(row) != len(header):
                yield start + 1, RecordError("missing_field", f"expected {len(header)} CSV columns {header}, "
                                                              f"got {len(row)}")
            elif not any(cell.strip() for cell in row):
                yield start + 1, RecordError("empty_content", "every column of this row is empty")
            else:
                yield start + 1, dict(zip(header, row))
        if restart is None:
            return
        i = restart


def iter_records(path: Path, encoding: str = "auto") -> tuple[str, Iterator[tuple[int, Any]]]:
    """(detected encoding, iterator of (line, record dict or RecordError)) for a JSONL, JSON or CSV file."""
    encoding, lines, bad = read_lines(path, encoding)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return encoding, iter_csv(lines, bad, encoding, path)
    if suffix == ".json":
        return encoding, iter_json(lines, bad, encoding, path)
    first = next((t for t in lines if t.strip()), "")
    if first.lstrip().startswith("[") or first.strip() == "{":
        # not one object per line: a JSON array or pretty-printed objects under a .jsonl name
        return encoding, iter_json(lines, bad, encoding, path)
    return encoding, iter_jsonl(lines, bad, encoding)
