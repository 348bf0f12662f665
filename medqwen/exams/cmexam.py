"""CMExam (williamliujl/CMExam): questions of China's National Medical Licensing Examination, up to five options.

    <cmexam_dir>/{val,test}.csv   (the release's data/val.csv, data/test.csv; train.csv is not used)
    columns Question,Options,Answer,Explanation (the release has more, e.g. Medical Discipline: ignored)
    Options  one string of lines `A 选项\nB 选项...` up to E (a literal backslash-n between them is accepted too);
             a few released items lost an option (`B ...\nC ...\nD ...\nE ...`): they keep their letters
    Answer   one letter, or several (`ABD`) for the few multi-answer items; the release leaves some blank or
             `nan`: those rows are skipped and counted per subject (the official code's `if pd.isna(answer)`)

Single-answer items are scored like every exam (the next-letter log-likelihood over however many options the
item has); multi-answer items are generated and matched as an exact set, and reported apart. val supplies the
few-shot examples (single-answer examples for single-answer items, multi-answer ones for multi-answer items).
CMExam publishes no few-shot prompt; ours follows CMMLU's shape with the exam's name:

    以下是中国医师资格考试的单项选择题，请直接给出正确答案的选项。\n\n        (multi: 多项选择题 ... 所有正确答案的选项)
    题目：{question}\nA. {A}\n...\nE. {E}\n答案是：{X}\n\n                   (one per few-shot example)
    题目：{question}\nA. ...\n答案是：
"""

from __future__ import annotations

import re
from pathlib import Path

from medqwen.configlib import UserError
from medqwen.exams.base import LETTERS, Exam, ExamDataError, Question, Skipped, check_answer, csv_records

REQUIRED = ["Question", "Options", "Answer", "Explanation"]
MAX_OPTIONS = 5
_OPTION_LINE = re.compile(r"^\s*([A-Z])(?:[\s.．、:：)）]+|$)(.*)$", re.S)


def parse_options(text: str, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`A 选项\nB 选项...` (real newlines or a literal backslash-n) -> (letters, option texts). Letters rise from
    A to at most E; one may be missing (the release lost some options) but none may repeat or go back."""
    lines = [line for line in re.split(r"\r?\n|\\n", text) if line.strip()]
    letters: list[str] = []
    options = []
    allowed = LETTERS[:MAX_OPTIONS]
    for line in lines:
        m = _OPTION_LINE.match(line)
        later = allowed[allowed.index(letters[-1]) + 1:] if letters else allowed
        if not m or m.group(1) not in later:
            raise ExamDataError(f"{where}: option line {line.strip()!r} is not `<letter> text` with a letter "
                                f"after {letters[-1] if letters else 'none'} (options are lines A to at most E, "
                                "in order)")
        letters.append(m.group(1))
        options.append(m.group(2).strip())
    if len(options) < 2:
        raise ExamDataError(f"{where}: fewer than two options in {text!r}")
    return tuple(letters), tuple(options)


class CmexamExam(Exam):
    name, title = "cmexam", "CMExam"
    subjects = {"physician": "医师资格考试"}  # the whole exam is one subject
    groups = {"medical": ["physician"], "all": ["physician"]}
    answered_test = True  # the released test split has its answers
    shot_split = "val"
    data_hint = ("Get it with `python data/get_ceval.py --benchmark cmexam --source CMExam/data` (the "
                 "release's val.csv and test.csv); the repository ships a small team-written sample in "
                 "data/benchmark/cmexam/.")

    def read(self, data_dir: Path, subject: str, split: str, skipped: Skipped) -> list[Question]:
        path = data_dir / f"{split}.csv"
        if not path.is_file():
            raise ExamDataError(f"no CMExam data: expected {path} (the release's data/{split}.csv). {self.data_hint}")
        return read_cmexam_csv(path, split, skipped)

    def instruction(self, q: Question, style: str) -> str:
        kind = "多项选择题，请直接给出所有正确答案的选项" if q.multi else "单项选择题，请直接给出正确答案的选项"
        return f"以下是中国{self.subjects[q.subject]}的{kind}。\n\n"

    def format_question(self, q: Question, style: str = "official", cot: bool = False) -> str:
        if cot:
            raise UserError("chain of thought is defined for C-Eval only, not CMExam")
        return "题目：" + q.question + "".join(f"\n{c}. {o}" for c, o in zip(q.letters, q.options)) + "\n答案是："


def read_cmexam_csv(path: str | Path, split: str = "test", skipped: Skipped | None = None) -> list[Question]:
    """A CMExam CSV; malformed rows stop with file:line (or are skipped and counted)."""
    path, skipped = Path(path), Skipped() if skipped is None else skipped
    columns: dict[str, int] = {}

    def check(header: list[str]) -> None:
        names = [h.strip() for h in header]
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise ExamDataError(f"{path}: header {header} lacks {missing}; CMExam has "
                                f"{','.join(REQUIRED)} (and optional further columns)")
        columns.update({c: names.index(c) for c in REQUIRED})

    questions = []
    for where, _, row in csv_records(path, check, skipped):
        try:
            question = row[columns["Question"]]
            if not question.strip():
                raise ExamDataError(f"{where}: empty question")
            letters, options = parse_options(row[columns["Options"]], where)
            answer = check_answer(row[columns["Answer"]], letters, where, multi=True)
        except ExamDataError as err:
            skipped.handle(err)
            continue
        explanation = row[columns["Explanation"]].strip() or None
        labels = None if letters == LETTERS[: len(options)] else letters
        questions.append(Question("physician", split, where.rsplit(":", 1)[1], question, options, answer,
                                  explanation, exam="cmexam", labels=labels))
    return questions
