"""Multiple-choice questions with known answers (GRPO's verifiable data): read them, check them, write them.

Every reader returns `medqwen.exams.base.Question`, so GRPO prompts are rendered and parsed by the benchmark's code.

    from medqwen.train.mcq import read_mcq_file, write_mcq_jsonl
    questions = read_mcq_file("data/grpo_mcq_sample.jsonl")            # MCQ JSONL
    questions = read_mcq_file("ceval-exam/val/clinical_medicine_val.csv")  # C-Eval CSV (dev/val: has answers)
    questions = read_mcq_file("cmmlu/dev/clinical_knowledge.csv")      # CMMLU CSV (",Question,A,B,C,D,Answer")

MCQ JSONL, one question per line (what data/convert_mcq.py writes):

    {"id": "med-001", "subject": "clinical_medicine", "question": "...", "options": ["...", "...", "...", "..."],
     "answer": "C"}

`options` may also be an {"A": ..., "D": ...} object, or the options may be top-level "A", "B", ... keys; any
count from 2 to 8 (A-H), as long as the letters run from A without a gap.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Iterable

from medqwen.configlib import UserError
from medqwen.exams.base import LETTERS, ExamDataError, Question
from medqwen.exams.ceval import CHOICES, read_csv_split
from medqwen.exams.cmmlu import HEADER as CMMLU_HEADER
from medqwen.exams.cmmlu import read_cmmlu_csv
from medqwen.jsonl import iter_jsonl_objects, write_jsonl


class McqDataError(UserError):
    """A multiple-choice file or line that cannot give a verifiable reward; the message names file and line."""


def subject_from_filename(path: str | Path) -> str:
    """`clinical_medicine_val.csv` -> `clinical_medicine` (C-Eval), `clinical_knowledge.csv` -> itself (CMMLU)."""
    return re.sub(r"_(dev|val|test)$", "", Path(path).stem)


def make_question(record: dict[str, Any], where: str, default_subject: str, default_id: str) -> Question:
    """Validate one JSON record (question, four options, answer letter) and turn it into a Question."""
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise McqDataError(f"{where}: 'question' must be a non-empty string")
    options = record.get("options")
    if options is None and all(c in record for c in CHOICES[:2]):
        options = [record[c] for c in LETTERS if c in record]
    if isinstance(options, dict):
        if sorted(options) != list(LETTERS[: len(options)]):
            raise McqDataError(f"{where}: 'options' object must have the keys A, B, ... without a gap, got "
                               f"{', '.join(sorted(options))}")
        options = [options[c] for c in LETTERS[: len(options)]]
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        raise McqDataError(f"{where}: 'options' must list 2 to {len(LETTERS)} options (A-{LETTERS[-1]})")
    if not all(isinstance(o, (str, int, float)) and str(o).strip() for o in options):
        raise McqDataError(f"{where}: every option must be a non-empty string")
    letters = LETTERS[: len(options)]
    answer = str(record.get("answer", "")).strip().upper()
    if answer not in letters:
        raise McqDataError(f"{where}: 'answer' must be one of {'/'.join(letters)}, got {record.get('answer')!r}")
    return Question(subject=str(record.get("subject") or default_subject), split="train",
                    id=str(record.get("id") or default_id), question=question,
                    options=tuple(str(o) for o in options), answer=answer,  # type: ignore[arg-type]
                    explanation=record.get("explanation") or None)


def read_mcq_jsonl(path: str | Path, subject: str | None = None) -> list[Question]:
    """MCQ JSONL (see the module docstring); errors name file and line."""
    path = Path(path)
    questions = []
    for lineno, record in iter_jsonl_objects(path, error=McqDataError):
        questions.append(make_question(record, f"{path}:{lineno}", subject or path.stem, f"{path.stem}-{lineno}"))
    return questions


def read_cmmlu_mcq(path: str | Path, subject: str | None = None) -> list[Question]:
    """A CMMLU CSV (`,Question,A,B,C,D,Answer`; the first column is the row number): the benchmark's reader."""
    try:
        questions = read_cmmlu_csv(path, subject or subject_from_filename(path), "train")
    except ExamDataError as err:
        raise McqDataError(str(err)) from None
    return [Question(q.subject, q.split, q.id, q.question, q.options, q.answer) for q in questions]


def read_mcq_csv(path: str | Path, subject: str | None = None) -> list[Question]:
    """A C-Eval (dev/val layout: it has answers) or CMMLU CSV, told apart by the header."""
    path = Path(path)
    with path.open(encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), [])
    lower = [h.strip().lower() for h in header]
    if lower[:6] == ["id", "question", *[c.lower() for c in CHOICES]]:
        if "answer" not in lower:
            raise McqDataError(f"{path}: no 'answer' column (C-Eval's test split keeps its answers private), so "
                               "there is nothing to reward; use the dev or val split")
        split = "dev" if "explanation" in lower else "val"
        # The benchmark's reader: the released layout, quoted newlines, file:line errors.
        return [Question(q.subject, "train", q.id, q.question, q.options, q.answer, q.explanation)
                for q in read_csv_split(path, subject or subject_from_filename(path), split)]
    if lower[1:7] == CMMLU_HEADER:
        return read_cmmlu_mcq(path, subject)
    raise McqDataError(f"{path}: header {header} is neither C-Eval (id,question,A,B,C,D,answer[,explanation]) nor "
                       "CMMLU (,Question,A,B,C,D,Answer)")


def read_mcq_file(path: str | Path, subject: str | None = None) -> list[Question]:
    """Questions with answers from .jsonl (MCQ JSONL) or .csv (C-Eval/CMMLU); at least one, or an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"multiple-choice data '{path}' not found. The repository ships "
                                "data/grpo_mcq_sample.jsonl; convert your own with `python data/convert_mcq.py "
                                "--input your.csv --output data/grpo_mcq.jsonl`")
    if path.suffix.lower() == ".csv":
        questions = read_mcq_csv(path, subject)
    elif path.suffix.lower() in (".jsonl", ".json"):
        questions = read_mcq_jsonl(path, subject)
    else:
        raise McqDataError(f"{path}: unknown extension; expected .jsonl (MCQ JSONL) or .csv (C-Eval/CMMLU)")
    if not questions:
        raise McqDataError(f"{path}: no questions")
    return questions


def question_record(q: Question) -> dict[str, Any]:
    """One MCQ JSONL line's content."""
    record = {"id": q.id, "subject": q.subject, "question": q.question, "options": list(q.options),
              "answer": q.answer}
    if q.explanation:
        record["explanation"] = q.explanation
    return record


def write_mcq_jsonl(questions: Iterable[Question], path: str | Path) -> Path:
    """Write MCQ JSONL (UTF-8, one question per line)."""
    return write_jsonl((question_record(q) for q in questions), path)
