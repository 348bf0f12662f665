"""Read knowledge files (txt, md, jsonl, csv; pdf with pypdf) into titled sections, then into chunks with stable ids.

A section's `source_id` is what citations and the retrieval gold set name: `<document>/<section title>`, derived
from the file's own structure (book title + `<篇名>` of the classical texts, Markdown headers, a record's title
or id), never from chunk boundaries, so it survives a change of chunk size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from medqwen.configlib import UserError
from medqwen.jsonl import iter_jsonl_objects
from medqwen.rag.chunking import chunk_text, normalize_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".jsonl", ".csv", ".pdf")
TITLE_KEYS = ("title", "question", "问", "name", "heading")
ID_KEYS = ("id", "_id", "doc_id")


class DocumentError(UserError):
    """A file that cannot be read (bad encoding, malformed line); the message says what to do."""


@dataclass
class Section:
    source_id: str  # "<document>/<section>" (unique within the file)
    title: str  # human-readable header shown with the chunk, e.g. "伤寒论 · 辨太阳病脉证并治上"
    text: str


@dataclass
class Chunk:
    id: str  # content hash: sha1(source path, text, occurrence)
    document: str  # header line + chunk text: what is embedded, searched and shown
    metadata: dict = field(default_factory=dict)


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Decode a file strictly; a wrong encoding gets a message naming the offset and the fix."""
    data = path.read_bytes()
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as err:
        raise DocumentError(
            f"{path}: not valid {encoding} (byte 0x{data[err.start]:02x} at offset {err.start}). Convert it "
            f"(e.g. `iconv -f GB18030 -t UTF-8 {path.name}`) or index it with --encoding gb18030."
        ) from None
    except LookupError:
        raise DocumentError(f"unknown encoding {encoding!r}") from None


def _unique(source_id: str, seen: dict[str, int]) -> str:
    """Repeated titles in one file (a book with two `<篇名>羚羊角`) get ' (2)', ' (3)'."""
    seen[source_id] = seen.get(source_id, 0) + 1
    return source_id if seen[source_id] == 1 else f"{source_id} ({seen[source_id]})"


def classical_sections(text: str, fallback_title: str) -> list[Section]:
    """Sections of the classical-text layout: a `书名：` header, `<目录>volume` lines and `<篇名>title` sections."""
    book_match = re.search(r"^书名：\s*(\S+)", text, re.M)
    book = book_match.group(1) if book_match else fallback_title
    sections: list[Section] = []
    seen: dict[str, int] = {}
    volume, title, title_volume, lines = "", None, "", []

    def flush() -> None:
        body = normalize_text("\n".join(lines))
        body = re.sub(r"^(内容|属性)：", "", body)  # field labels of this layout, not text
        if title is not None and body:
            parts = [book] + ([title_volume] if title_volume else []) + ([title] if title != book else [])
            sections.append(Section(_unique("/".join(parts), seen), " · ".join(parts), body))

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.startswith("<目录>"):
            volume = line[len("<目录>"):].strip().replace("\\", "·")
        elif line.startswith("<篇名>"):
            flush()
            title, title_volume, lines = line[len("<篇名>"):].strip(), volume, []
        else:
            lines.append(line)
    flush()
    return sections


def markdown_header(line: str) -> str | None:
    """The title of an ATX header line (`## Title ##`), else None. Plain string work: the obvious regex
    `^#{1,6}\\s+(.+?)\\s*#*\\s*$` backtracks cubically on a header followed by a long run of spaces."""
    hashes = len(line) - len(line.lstrip("#"))
    if not 1 <= hashes <= 6 or len(line) == hashes or not line[hashes].isspace():
        return None
    title = line[hashes:].strip().rstrip("#").strip()
    return title or None


def markdown_sections(text: str, doc_title: str) -> list[Section]:
    """One section per Markdown header (text before the first header goes under the document title)."""
    sections: list[Section] = []
    seen: dict[str, int] = {}
    title, lines = doc_title, []

    def flush() -> None:
        body = normalize_text("\n".join(lines))
        if body:
            parts = [doc_title] + ([title] if title != doc_title else [])
            sections.append(Section(_unique("/".join(parts), seen), " · ".join(parts), body))

    for line in text.replace("\r\n", "\n").split("\n"):
        header = markdown_header(line)
        if header:
            flush()
            title, lines = header, []
        else:
            lines.append(line)
    flush()
    return sections


def record_sections(records: list[tuple[int, dict]], doc_title: str) -> list[Section]:
    """JSONL/CSV records: title from title/question/问..., id from id/_id, text = the other text fields."""
    sections: list[Section] = []
    seen: dict[str, int] = {}
    for number, record in records:
        title = next((str(record[k]).strip() for k in TITLE_KEYS if str(record.get(k) or "").strip()), "")
        rid = next((str(record[k]).strip() for k in ID_KEYS if str(record.get(k) or "").strip()), "")
        # The title goes into the chunk header; the body is every other text field, one paragraph each.
        body_keys = [k for k in record if k not in ID_KEYS and not (title and k in TITLE_KEYS and
                                                                     str(record[k]).strip() == title)]
        text = "\n\n".join(str(record[k]).strip() for k in body_keys
                           if isinstance(record[k], (str, int, float)) and str(record[k]).strip())
        if not text:
            continue
        name = rid or title or f"#{number}"
        heading = " · ".join([doc_title] + ([title] if title else []))
        sections.append(Section(_unique(f"{doc_title}/{name}", seen), heading, normalize_text(text)))
    return sections


def read_sections(path: Path, encoding: str = "utf-8", skipped: list[str] | None = None) -> list[Section]:
    """A file's titled sections; raises DocumentError with a clear message for unreadable input. Bad JSONL lines
    are appended to `skipped` ("path:line: why") and skipped when a list is given, else they raise."""
    suffix = path.suffix.lower()
    doc_title = path.stem
    if suffix == ".pdf":
        try:
            from pypdf import PdfReader
        except ImportError:
            raise DocumentError(f"{path}: reading PDF needs `pip install pypdf`") from None
        try:
            pages = [page.extract_text() or "" for page in PdfReader(str(path)).pages]
        except Exception as err:  # pypdf raises many types for damaged files
            raise DocumentError(f"{path}: cannot read PDF ({err})") from None
        seen: dict[str, int] = {}
        return [Section(_unique(f"{doc_title}/p{i + 1}", seen), f"{doc_title} · p{i + 1}", normalize_text(t))
                for i, t in enumerate(pages) if t.strip()]

    text = read_text(path, encoding)
    if suffix == ".jsonl":
        return record_sections(list(iter_jsonl_objects(path, text, error=DocumentError, skipped=skipped)), doc_title)
    if suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as err:
            raise DocumentError(f"{path}: malformed CSV ({err})") from None
        return record_sections([(i + 2, row) for i, row in enumerate(rows)], doc_title)  # +2: header is line 1
    if "\x00" in text:
        raise DocumentError(f"{path}: contains NUL bytes (a binary file?); remove it from the input")
    if "<篇名>" in text:
        return classical_sections(text, doc_title)
    return markdown_sections(text, doc_title)


def file_chunks(path: Path, source: str, chunk_size: int, chunk_overlap: int, encoding: str = "utf-8",
                skipped: list[str] | None = None) -> list[Chunk]:
    """Chunks of one file with content-hash ids; each chunk's document starts with its section header."""
    chunks: list[Chunk] = []
    occurrences: dict[str, int] = {}
    for section in read_sections(path, encoding, skipped):
        pieces = chunk_text(section.text, chunk_size, chunk_overlap)
        for index, piece in enumerate(pieces):
            document = f"{section.title}\n{piece}"
            n = occurrences[document] = occurrences.get(document, 0) + 1
            chunk_id = hashlib.sha1(f"{source}\0{n}\0{document}".encode()).hexdigest()[:32]
            chunks.append(Chunk(chunk_id, document, {
                "source": source, "source_id": section.source_id, "title": section.title,
                "chunk_index": index, "section_chunks": len(pieces),
            }))
    return chunks
