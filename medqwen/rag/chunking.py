"""Chinese-aware chunking: sentences end at 。！？； (and ASCII .!?;), chunks pack whole sentences.

    chunk_text("太阳之为病，脉浮。头项强痛而恶寒。", chunk_size=10, chunk_overlap=0)
    -> ["太阳之为病，脉浮。", "头项强痛而恶寒。"]

Sizes are in characters (one Chinese character is about one token for e5/bge tokenizers).
"""

from __future__ import annotations

import re

# A sentence ends after one of 。！？；!?; (and any closing quotes/brackets after it), after ". ", or at a newline.
_CLOSERS = r"”’」』）)\]"
_SENTENCE = re.compile(rf"[^\n]+?(?:[。！？；!?;]+[{_CLOSERS}]*|\.(?=\s)|(?=\n)|$)")
_CJK = r"\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef"
# A hard line wrap between two CJK characters (the classical books wrap lines mid-sentence): join it.
_CJK_WRAP = re.compile(rf"(?<=[{_CJK}])[ \t]*\n[ \t]*(?=[{_CJK}])")


def normalize_text(text: str) -> str:
    """CRLF/CR -> LF, trailing spaces dropped, CJK hard wraps joined, blank-line runs kept as one paragraph break."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    # Per line, not re.sub(r"[ \t]+\n"): that regex restarts at every space of a run, quadratic in its length.
    text = "\n".join(line.rstrip(" \t\u3000") for line in text.split("\n"))
    text = re.sub(r"\n{2,}", "\0", text)  # protect paragraph breaks while joining wraps
    text = _CJK_WRAP.sub("", text)
    return text.replace("\0", "\n\n").strip()


def split_sentences(text: str) -> list[str]:
    """Split after 。！？；!?; (keeping the mark and closing quotes) and at line breaks; no empty pieces."""
    return [s for s in (m.group(0).strip() for m in _SENTENCE.finditer(text)) if s]


def _hard_split(sentence: str, size: int, overlap: int) -> list[str]:
    """A sentence longer than `size`: fixed windows of `size` characters with `overlap`."""
    step = max(1, size - overlap)
    return [sentence[i:i + size] for i in range(0, max(1, len(sentence) - overlap), step)]


def _join(sentences: list[str]) -> str:
    """Chinese sentences join without a space, others (English) with one."""
    out = sentences[0]
    for s in sentences[1:]:
        out += ("" if re.match(rf"[{_CJK}]", out[-1]) or re.match(rf"[{_CJK}]", s[0]) else " ") + s
    return out


def chunk_text(text: str, chunk_size: int = 200, chunk_overlap: int = 40) -> list[str]:
    """Pack whole sentences into chunks of at most `chunk_size` characters.

    Consecutive chunks share up to `chunk_overlap` characters of whole trailing sentences, so a fact cut
    at a boundary is still whole in one chunk. A sentence longer than `chunk_size` is cut into windows.
    """
    if chunk_size <= 0 or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"need chunk_size > 0 and 0 <= chunk_overlap < chunk_size, got {chunk_size}, {chunk_overlap}")
    pieces: list[str] = []
    for sentence in split_sentences(text):
        pieces += [sentence] if len(sentence) <= chunk_size else _hard_split(sentence, chunk_size, chunk_overlap)

    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for piece in pieces:
        if current and length + len(piece) > chunk_size:
            chunks.append(_join(current))
            # Carry whole trailing sentences (up to chunk_overlap characters) into the next chunk.
            carry: list[str] = []
            carried = 0
            for prev in reversed(current):
                if carried + len(prev) > chunk_overlap or carried + len(prev) + len(piece) > chunk_size:
                    break
                carry.insert(0, prev)
                carried += len(prev)
            current, length = carry, carried
        current.append(piece)
        length += len(piece)
    if current:
        chunks.append(_join(current))
    return chunks
