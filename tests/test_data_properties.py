"""Property tests of the data readers against Python's own: what `csv.reader` reads from a CSV file (every quoting
mode, Excel-style exports, every auto-detected encoding; csv.writer itself leaves a bare CR unquoted under a
"\n" line terminator, so a few generated files are not well-formed, and there csv.reader is matched wherever
no stray quote was reported) and what `json` reads from JSON Lines/JSON (every
question/answer key pair, alone or with other keys, any key casing, pretty arrays, BOM, CRLF) is exactly what
prepare_data reads and converts."""

import codecs
import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medqwen.data import QA_KEYS, iter_records, prepare
from medqwen.data.config import DataConfig

HEADER = ["department", "title", "ask", "answer"]
# Chinese and English text with every character CSV treats specially
CHARS = list('内科头痛发热咳嗽ABCxyz 0123"\',，。\t\r\n;|')
TEXT = st.text(alphabet=st.sampled_from(CHARS), max_size=12)
QUOTING = [csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC, csv.QUOTE_NONE]
QUOTING += [getattr(csv, name) for name in ("QUOTE_STRINGS", "QUOTE_NOTNULL") if hasattr(csv, name)]
ENCODINGS = ["utf-8", "utf-8-sig", "gb18030", "utf-16-le-bom", "utf-16-be-bom"]
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-le-bom":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding)


def oracle_rows(text: str, delimiter: str) -> list[dict]:
    """What csv.reader reads: rows of the header's width that are not blank."""
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    header = [h.strip().lower() for h in rows[0]]
    return [dict(zip(header, row)) for row in rows[1:]
            if len(row) == len(header) and any(cell.strip() for cell in row)]


def also_other_utf8(raw: bytes, text: str) -> bool:
    """Whether these bytes (of `text` in some encoding) are also valid UTF-8 of another text: a GB18030 file of only
    a few characters can be (头 is CD B7, also UTF-8's ͷ)."""
    try:
        return raw.decode("utf-8") != text
    except UnicodeDecodeError:
        return False


def read_back(path: Path) -> tuple[list[dict], list]:
    _, records = iter_records(path)
    records = list(records)
    return [r for _, r in records if isinstance(r, dict)], [r for _, r in records if not isinstance(r, dict)]


@given(table=st.lists(st.lists(TEXT, min_size=4, max_size=4), max_size=8), quoting=st.sampled_from(QUOTING),
       encoding=st.sampled_from(ENCODINGS), dialect=st.sampled_from(["unix", "excel", "excel-tab", "cr"]))
@PROPERTY
def test_csv_reads_exactly_what_csv_reader_reads(tmp_path, table, quoting, encoding, dialect):
    buffer = io.StringIO(newline="")
    kwargs = {"unix": {"lineterminator": "\n"}, "excel": {}, "excel-tab": {"dialect": "excel-tab"},
              "cr": {"lineterminator": "\r"}}[dialect]
    writer = csv.writer(buffer, quoting=quoting, escapechar="\\" if quoting == csv.QUOTE_NONE else None, **kwargs)
    writer.writerows([HEADER] + table)
    text = buffer.getvalue()
    delimiter = "\t" if dialect == "excel-tab" else ","
    path = tmp_path / ("t.tsv" if dialect == "excel-tab" else "t.csv")
    path.write_bytes(encode(text, encoding))
    assume(not also_other_utf8(path.read_bytes(), text))  # no reader can tell: test_bytes_valid_in_both_encodings
    rows, errors = read_back(path)
    malformed = [e for e in errors if e.reason == "malformed_csv"]
    if not malformed:
        assert rows == oracle_rows(text, delimiter)
    else:  # the only departure from csv.reader: it, too, reads a row of the wrong width or an unclosed quote there
        every = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
        assert any(len(row) not in (0, 1, len(HEADER)) for row in every) or text.count('"') % 2
    written = [dict(zip(HEADER, row)) for row in table if any(cell.strip() for cell in row)]
    if oracle_rows(text, delimiter) == written:  # csv.reader reads the table back: nothing may be malformed
        assert not malformed and rows == written


PLAIN = st.text(alphabet=st.sampled_from([c for c in CHARS if c not in '",\r\n']), max_size=12)


@given(table=st.lists(st.lists(PLAIN, min_size=4, max_size=4), min_size=1, max_size=6), at=st.integers(0, 6),
       stray=st.sampled_from(['内科,"标题,问题,回答', '内科,标题,问题,"回答', '"', '内科,"a""b,c,d']))
@PROPERTY
def test_a_stray_opening_quote_costs_only_its_own_line(tmp_path, table, at, stray):
    """Rows around one line whose quote opens a field and never closes (no quote follows it, so csv.reader itself
    would swallow the rest of the file into one field): every other row is read as csv.reader reads the file
    without that line, and the line is counted, not silently dropped. (A quote that does close into a row of the
    header's width is a row: csv.reader is the reference, see test_data.py.)"""
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(table)
    lines = buffer.getvalue().splitlines(keepends=True)
    cut = min(at, len(lines))
    clean = "department,title,ask,answer\n" + "".join(lines)
    text = "department,title,ask,answer\n" + "".join(lines[:cut]) + stray + "\n" + "".join(lines[cut:])
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    rows, errors = read_back(path)
    assert rows == oracle_rows(clean, ",")
    assert [e.reason for e in errors if e.reason == "malformed_csv"] == ["malformed_csv"]


def _case(key: str, style: int) -> str:
    return [key, key.upper(), key.capitalize()][style % 3]


@given(pair=st.sampled_from(QA_KEYS), style=st.integers(0, 2),
       records=st.lists(st.tuples(TEXT, TEXT, st.dictionaries(st.sampled_from(["id", "label", "source", "Extra"]),
                                                               TEXT, max_size=2)), min_size=1, max_size=6),
       layout=st.sampled_from(["jsonl", "jsonl-crlf-bom", "json-array-pretty", "json-really-jsonl"]))
@PROPERTY
def test_json_question_answer_pairs_read_exactly_what_json_reads(tmp_path, pair, style, records, layout):
    question, answer = pair
    objects = [{**extra, _case(question, style): q, _case(answer, style + 1): a} for q, a, extra in records]
    if layout == "json-array-pretty":
        text, name = json.dumps(objects, ensure_ascii=False, indent=2), "d.json"
    else:
        newline = "\r\n" if "crlf" in layout else "\n"
        text = "".join(json.dumps(o, ensure_ascii=False) + newline for o in objects)
        name = "d.json" if layout == "json-really-jsonl" else "d.jsonl"
    path = tmp_path / name
    path.write_bytes(("\ufeff" if "bom" in layout else "").encode() + text.encode("utf-8"))
    decoded = json.loads(text) if layout == "json-array-pretty" else [json.loads(line) for line in text.splitlines()]
    expected = [[{"role": "user", "content": o[_case(question, style)].strip()},
                 {"role": "assistant", "content": o[_case(answer, style + 1)].strip()}] for o in decoded]
    expected = [e for e in expected if e[0]["content"] and e[1]["content"]]
    cfg = DataConfig(input=[str(path)], output=str(tmp_path / "o.jsonl"), tokenizer="none", shuffle=False,
                     dedup=False, skip_invalid=True)
    stats = prepare(cfg, verbose=False)
    out = [json.loads(line)["conversations"] for line in (tmp_path / "o.jsonl").read_text("utf-8").splitlines()]
    assert out == expected
    assert stats["summary"]["read"] == len(objects)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_utf16_and_every_detected_encoding_reads_a_multiline_field(tmp_path, encoding):
    text = 'department,title,ask,answer\r\n内科,头痛,"第一行\r\n第二行",多喝水\r\n'
    path = tmp_path / "t.csv"
    path.write_bytes(encode(text, encoding))
    rows, errors = read_back(path)
    assert rows == oracle_rows(text, ",") and not errors


def test_bytes_valid_in_both_encodings(tmp_path):
    """A GB18030 file whose every line is also valid UTF-8 reads as UTF-8 (no reader can tell them apart) unless the
    encoding is given; one whose other lines are not valid UTF-8 is GB18030, every line of it."""
    header = "department,title,ask,answer\n"
    both = tmp_path / "both.csv"
    both.write_bytes((header + "A,头痛,头痛,痛\n").encode("gb18030"))
    assert both.read_bytes().decode("utf-8") != both.read_bytes().decode("gb18030")
    assert iter_records(both)[0] == "utf-8"
    encoding, records = iter_records(both, encoding="gb18030")
    assert [r for _, r in records] == [{"department": "A", "title": "头痛", "ask": "头痛", "answer": "痛"}]
    mixed = tmp_path / "mixed.csv"
    mixed.write_bytes((header + "A,头痛,头痛,痛\n" + "内科,发热,发热三天,多喝水\n").encode("gb18030"))
    encoding, records = iter_records(mixed)
    assert encoding == "gb18030"
    assert [r for _, r in records] == [{"department": "A", "title": "头痛", "ask": "头痛", "answer": "痛"},
                                       {"department": "内科", "title": "发热", "ask": "发热三天", "answer": "多喝水"}]
