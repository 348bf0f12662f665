"""What every exam shares: the question record, option letters, the few-shot prompt shape, CSV row checking.

An exam subclasses `Exam` with its instruction line, its question format and its CSV reader; prompts, scoring,
statistics and reports are the same code for every exam (medqwen.exams.runner).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from medqwen.chat import escape_control_tokens
from medqwen.configlib import UserError

# Option letters: exams have 4 (C-Eval, CMMLU) or 5 (CMExam) options; nothing below assumes a count.
LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")


class ExamDataError(UserError):
    """An exam file that is missing or does not have its published layout; the message names file and line."""


class Ungradable(ExamDataError):
    """A well-formed row that cannot be graded (no answer given: blank, `nan`); skipped and counted per subject
    whatever --skip_invalid says, as the official evaluation code skips them (CMExam: `if pd.isna(answer)`)."""

    def __init__(self, where: str, reason: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.reason = reason


# What pandas' read_csv reads as missing (its default na_values): the official scripts read the releases so.
MISSING_ANSWERS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                   "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


@dataclass
class Question:
    """One multiple-choice item. `answer` is one letter, several letters for a multi-answer item (CMExam's
    `ABD`), or None where answers are not public (C-Eval's test split). `labels` are the option letters as
    published where they are not A, B, C... in order (a CMExam item whose release lost its option A reads
    `B ...\nC ...`): the prompt shows them and the answer uses them, as the official evaluation does."""

    subject: str
    split: str
    id: str
    question: str
    options: tuple[str, ...]
    answer: str | None = None
    explanation: str | None = None
    exam: str = "ceval"
    labels: tuple[str, ...] | None = None

    @property
    def letters(self) -> tuple[str, ...]:
        return self.labels or LETTERS[: len(self.options)]

    @property
    def multi(self) -> bool:
        """More than one correct option (scored apart: exact-set match of a generated answer)."""
        return self.answer is not None and len(self.answer) > 1

    @property
    def key(self) -> str:
        """The subject as reports name it: bare for C-Eval (as before), `<exam>/<subject>` otherwise."""
        return qualified(self.exam, self.subject)


def qualified(exam: str, subject: str) -> str:
    return subject if exam == "ceval" else f"{exam}/{subject}"


def rotate(q: Question, r: int) -> Question:
    """The question with its options cyclically rotated by r: option i of the result is option (i + r) % n of
    the original, and the answer letters move with their options (the letters themselves stay in place)."""
    n, letters = len(q.options), q.letters
    r %= n
    options = q.options[r:] + q.options[:r]
    answer = None
    if q.answer is not None:
        answer = "".join(sorted((letters[(letters.index(a) - r) % n] for a in q.answer), key=LETTERS.index))
    return replace(q, options=options, answer=answer)


def escaped(q: Question) -> Question:
    """The question with control tokens in its subject, text, options and explanation neutralised: exam files
    are untrusted text, and a `<|im_start|>` inside a question must not open a turn once templated."""
    esc = escape_control_tokens
    return replace(q, subject=esc(q.subject), question=esc(q.question), options=tuple(esc(o) for o in q.options),
                   explanation=esc(q.explanation) if q.explanation else q.explanation)


def check_answer(answer: Any, letters: Sequence[str], where: str, multi: bool = False) -> str:
    """The answer letters, upper-cased and sorted; an error naming the row when one is not an option."""
    if answer is None or str(answer).strip() in MISSING_ANSWERS:
        raise Ungradable(where, "unanswered", f"no answer given ({answer!r}): the row cannot be graded")
    text = str(answer).strip().upper()
    ok = bool(text) and all(a in letters for a in text) and len(set(text)) == len(text) and (multi or len(text) == 1)
    if not ok:
        raise ExamDataError(f"{where}: answer must be {'letters' if multi else 'one'} of {'/'.join(letters)}, "
                            f"got {answer!r}")
    return "".join(sorted(text))


class Skipped:
    """Collects malformed rows when the user asked to skip them (--skip_invalid) instead of stopping, and always
    the rows that cannot be graded (`ungraded`: count by reason, `ungraded_rows`: their locations)."""

    def __init__(self, skip: bool = False):
        self.skip, self.rows = skip, []
        self.ungraded: dict[str, int] = {}
        self.ungraded_rows: list[str] = []

    def handle(self, err: ExamDataError) -> None:
        if isinstance(err, Ungradable):
            self.ungraded[err.reason] = self.ungraded.get(err.reason, 0) + 1
            self.ungraded_rows.append(str(err))
            return
        if not self.skip:
            raise err
        self.rows.append(str(err))

    def __len__(self) -> int:
        return len(self.rows)


def csv_records(path: Path, check_header: Callable[[list[str]], None], skipped: Skipped | None = None
                ) -> Iterator[tuple[str, list[str], list[str]]]:
    """(file:line, header, row) for each non-empty data row of a UTF-8 CSV (quoted fields may hold newlines);
    a row with the wrong number of fields stops with its file:line (or is skipped and counted)."""
    skipped = Skipped() if skipped is None else skipped
    with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig: tolerate a BOM from spreadsheet tools
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ExamDataError(f"{path}: empty file") from None
        except csv.Error as err:
            raise ExamDataError(f"{path}: not a valid CSV: {err}") from None
        check_header(header)
        try:
            for row in reader:
                if not row:
                    continue
                where = f"{path}:{reader.line_num}"
                if len(row) != len(header):
                    skipped.handle(ExamDataError(f"{where}: {len(row)} fields, expected {len(header)} (a stray "
                                                 f"comma or an unclosed quote?)"))
                    continue
                yield where, header, row
        except csv.Error as err:
            raise ExamDataError(f"{path}:{reader.line_num}: not a valid CSV: {err}") from None


class Exam:
    """One exam: its subjects and groups, data layout, and prompt. Subclasses set the class attributes and
    override `read` and the prompt hooks; `build_prompt` gives every exam the same few-shot shape."""

    name = ""
    title = ""
    subjects: dict[str, str] = {}  # subject -> Chinese name used in the instruction
    groups: dict[str, list[str]] = {}
    shot_split = "dev"
    answered_test = False  # True: the released test split has answers, scored for --split val
    styles: tuple[str, ...] = ("official",)
    data_hint = ""

    def graded_split(self, split: str) -> str:
        """The split scored for the benchmark's --split (val: graded; test: C-Eval's submission). Exams whose
        released test split carries answers (`answered_test`) score it for --split val and have no test mode."""
        if not self.answered_test:
            return split
        if split != "val":
            raise UserError(f"{self.title}'s scored split is `test` (answers public): run it with --split val "
                             "(graded); --split test is C-Eval's answer-less submission split")
        return "test"

    def read(self, data_dir: Path, subject: str, split: str, skipped: Skipped) -> list[Question]:
        raise NotImplementedError

    def load(self, data_dir: str | Path, subject: str, split: str, skipped: Skipped | None = None) -> list[Question]:
        questions = self.read(Path(data_dir), subject, split, Skipped() if skipped is None else skipped)
        if not questions:
            raise ExamDataError(f"{self.title} {subject}/{split} in {data_dir}: no questions")
        return questions

    def check_style(self, style: str) -> None:
        if style not in self.styles:
            raise UserError(f"prompt style {style!r} is not defined for {self.title} (has: {', '.join(self.styles)})")

    # -- prompt hooks ------------------------------------------------------------------------------------
    def instruction(self, q: Question, style: str) -> str:
        raise NotImplementedError

    def format_question(self, q: Question, style: str = "official", cot: bool = False) -> str:
        raise NotImplementedError

    def continuation(self, letter: str, style: str = "official") -> str:
        return letter

    def answer_text(self, q: Question, style: str = "official", cot: bool = False) -> str:
        if cot:
            raise UserError(f"chain of thought is defined for C-Eval only, not {self.title}")
        return self.continuation(q.answer or "", style)

    def cot_cue(self, cot: bool) -> str:
        return ""

    def build_prompt(self, q: Question, shots: Sequence[Question] = (), style: str = "official",
                     cot: bool = False) -> str:
        """Instruction, k examples each ending in its answer and a blank line, then the question."""
        self.check_style(style)
        q, shots = escaped(q), [escaped(s) for s in shots]
        head = self.instruction(q, style)
        head += "".join(self.format_question(s, style) + self.answer_text(s, style, cot) + "\n\n" for s in shots)
        return head + self.format_question(q, style, cot)

    def build_messages(self, q: Question, shots: Sequence[Question] = (), style: str = "official",
                       cot: bool = False) -> list[dict[str, str]]:
        """The same prompt as a chat: examples as earlier turns, the instruction in the first user turn."""
        self.check_style(style)
        q, shots = escaped(q), [escaped(s) for s in shots]
        messages: list[dict[str, str]] = []
        first = self.instruction(q, style)
        for s in shots:
            messages.append({"role": "user", "content": first + self.format_question(s, style)})
            messages.append({"role": "assistant", "content": self.answer_text(s, style, cot).lstrip(" ")})
            first = ""
        messages.append({"role": "user", "content": first + self.format_question(q, style)})
        return messages
