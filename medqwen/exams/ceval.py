"""C-Eval (hkust-nlp/ceval; the hub's ceval/ceval-exam): 52 subjects, four options, the released layout.

    <ceval_dir>/{dev,val,test}/<subject>_<split>.csv   columns id,question,A,B,C,D,answer[,explanation]
    <ceval_dir>/<subject>/                               or a `datasets` copy (save_to_disk folder, hub parquet)

dev holds 5 answered items per subject with explanations (the few-shot and CoT examples), val the graded items,
test the answer-less submission items. Two prompt styles, character for character:

    official  the C-Eval paper's answer-only prompt; the letter follows 答案： directly
              以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\n\n
              {question}\nA. {A}\n...\nD. {D}\n答案：{X}\n\n   (one per few-shot example; then the question)
    lm-eval   lm-evaluation-harness 0.4.13 `ceval-valid`: no 考试, question.strip(), answers and scored letters " A"

CoT (generate only) follows the paper: the cue 让我们一步一步思考，\n1. and dev explanations as examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medqwen.configlib import UserError
from medqwen.exams.base import LETTERS, Exam, ExamDataError, Question, Skipped, check_answer, csv_records

CHOICES = LETTERS[:4]  # C-Eval's (and CMMLU's) four option letters

# subject -> Chinese name, as in C-Eval's subject_mapping.json (the name goes into the instruction).
SUBJECTS = {
    "computer_network": "计算机网络", "operating_system": "操作系统", "computer_architecture": "计算机组成",
    "college_programming": "大学编程", "college_physics": "大学物理", "college_chemistry": "大学化学",
    "advanced_mathematics": "高等数学", "probability_and_statistics": "概率统计",
    "discrete_mathematics": "离散数学", "electrical_engineer": "注册电气工程师", "metrology_engineer": "注册计量师",
    "high_school_mathematics": "高中数学", "high_school_physics": "高中物理", "high_school_chemistry": "高中化学",
    "high_school_biology": "高中生物", "middle_school_mathematics": "初中数学", "middle_school_biology": "初中生物",
    "middle_school_physics": "初中物理", "middle_school_chemistry": "初中化学", "veterinary_medicine": "兽医学",
    "college_economics": "大学经济学", "business_administration": "工商管理", "marxism": "马克思主义基本原理",
    "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论体系概论", "education_science": "教育学",
    "teacher_qualification": "教师资格", "high_school_politics": "高中政治", "high_school_geography": "高中地理",
    "middle_school_politics": "初中政治", "middle_school_geography": "初中地理",
    "modern_chinese_history": "近代史纲要", "ideological_and_moral_cultivation": "思想道德修养与法律基础",
    "logic": "逻辑学", "law": "法学", "chinese_language_and_literature": "中国语言文学", "art_studies": "艺术学",
    "professional_tour_guide": "导游资格", "legal_professional": "法律职业资格", "high_school_chinese": "高中语文",
    "high_school_history": "高中历史", "middle_school_history": "初中历史", "civil_servant": "公务员",
    "sports_science": "体育学", "plant_protection": "植物保护", "basic_medicine": "基础医学",
    "clinical_medicine": "临床医学", "urban_and_rural_planner": "注册城乡规划师", "accountant": "注册会计师",
    "fire_engineer": "注册消防工程师", "environmental_impact_assessment_engineer": "环境影响评价工程师",
    "tax_accountant": "税务师", "physician": "医师资格",
}
GROUPS = {  # C-Eval's part of the cross-exam groups (medqwen.exams)
    "medical": ["clinical_medicine", "basic_medicine", "physician", "veterinary_medicine"],
    # the forgetting check's non-medical subjects: engineering, economics, history, law, mathematics
    "general": ["computer_network", "college_economics", "modern_chinese_history", "law", "high_school_mathematics"],
    "all": list(SUBJECTS),
}
SPLIT_COLUMNS = {  # the released CSV layout
    "dev": ["id", "question", "A", "B", "C", "D", "answer", "explanation"],
    "val": ["id", "question", "A", "B", "C", "D", "answer"],
    "test": ["id", "question", "A", "B", "C", "D"],
}


# ----------------------------------------------------------------------------------------------------------
# Data: the released CSV layout (<dir>/<split>/<subject>_<split>.csv) or a Hugging Face `datasets` copy.


def load_questions(data_dir: str | Path, subject: str, split: str, skipped: Skipped | None = None) -> list[Question]:
    """The questions of one C-Eval subject and split, from the CSV layout or a local `datasets` copy."""
    data_dir = Path(data_dir)
    csv_path = data_dir / split / f"{subject}_{split}.csv"
    if csv_path.is_file():
        return read_csv_split(csv_path, subject, split, skipped)
    hf_dir = data_dir / subject
    if hf_dir.is_dir():
        return read_hf_split(hf_dir, subject, split)
    raise ExamDataError(
        f"no C-Eval data for {subject}/{split}: expected {csv_path} (released CSV layout) or {hf_dir}/ "
        f"(Hugging Face datasets layout). {CevalExam.data_hint}")


def _make_question(row: dict[str, Any], subject: str, split: str, where: str) -> Question:
    """Validate one row (any layout) and turn it into a Question."""
    if row.get("question") is None or str(row["question"]).strip() == "":
        raise ExamDataError(f"{where}: empty or missing 'question'")
    for col in CHOICES:  # a blank option is still an option: the item is graded by its letter
        if col not in row or row[col] is None:
            raise ExamDataError(f"{where}: missing option column '{col}'")
    answer = check_answer(row.get("answer"), CHOICES, where) if split != "test" else None
    return Question(subject=subject, split=split, id=str(row["id"]).strip(), question=str(row["question"]),
                    options=tuple(str(row[c]) for c in CHOICES), answer=answer,
                    explanation=(str(row["explanation"]) if row.get("explanation") not in (None, "") else None))


def read_csv_split(path: str | Path, subject: str, split: str, skipped: Skipped | None = None) -> list[Question]:
    """Read a released C-Eval CSV (quoted fields may hold newlines); errors name file and line."""
    path, skipped = Path(path), Skipped() if skipped is None else skipped
    expected = SPLIT_COLUMNS[split]

    def check(header: list[str]) -> None:
        # dev must carry the explanation (CoT few-shot); val/test may carry extra columns (the hub export does).
        if header[: len(expected)] != expected:
            raise ExamDataError(f"{path}: header {header} does not match the released layout {expected}")

    questions = []
    for where, header, row in csv_records(path, check, skipped):
        try:
            questions.append(_make_question(dict(zip(header, row)), subject, split, where))
        except ExamDataError as err:
            skipped.handle(err)
    if not questions:
        raise ExamDataError(f"{path}: no questions")
    return questions


def read_hf_split(folder: str | Path, subject: str, split: str) -> list[Question]:
    """Read a subject saved by `datasets` (save_to_disk folder, or the hub's parquet files)."""
    import datasets

    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file():
        dataset_dict = datasets.load_from_disk(str(folder))
        if split not in dataset_dict:
            raise ExamDataError(f"{folder}: no split '{split}' (has {list(dataset_dict)})")
        rows = dataset_dict[split]
    else:
        files = sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"{split}/*.parquet"))
        if not files:
            raise ExamDataError(f"{folder}: neither a save_to_disk folder nor {split}-*.parquet files")
        rows = datasets.load_dataset("parquet", data_files=[str(p) for p in files], split="train")
    missing = [c for c in SPLIT_COLUMNS[split] if c not in rows.column_names]
    if missing:
        raise ExamDataError(f"{folder} ({split}): missing columns {missing}")
    return [_make_question(row, subject, split, f"{folder} ({split}) row {i}") for i, row in enumerate(rows)]


# ----------------------------------------------------------------------------------------------------------
# Prompt: C-Eval's own (medqwen.exams.runner dispatches each question to its exam's).

STYLES = ("official", "lm-eval")


class CevalExam(Exam):
    """C-Eval: the paper's answer-only prompt (official) and lm-eval's ceval-valid (lm-eval); CoT as the paper."""

    name, title = "ceval", "C-Eval"
    subjects = SUBJECTS
    groups = GROUPS
    shot_split = "dev"
    styles = STYLES
    data_hint = ("Get it with `python data/get_ceval.py` (hub, or --zip ceval-exam.zip); the repository ships a "
                 "small team-written sample in data/benchmark/ceval-exam/.")

    def read(self, data_dir: Path, subject: str, split: str, skipped: Skipped) -> list[Question]:
        return load_questions(data_dir, subject, split, skipped)

    def instruction(self, q: Question, style: str) -> str:
        """The task description line; the paper says 考试, lm-eval's ceval-valid drops it."""
        name = SUBJECTS.get(q.subject, q.subject)
        if style == "official":
            return f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n"
        if style == "lm-eval":
            return f"以下是中国关于{name}的单项选择题，请选出其中的正确答案。\n\n"
        raise UserError(f"unknown prompt style {style!r}; choose from {STYLES}")

    def format_question(self, q: Question, style: str = "official", cot: bool = False) -> str:
        """The question, its options and `答案：` (the CoT cue follows it in CoT mode)."""
        text = q.question.strip() if style == "lm-eval" else q.question  # lm-eval: {{question.strip()}}
        text += "".join(f"\n{c}. {o}" for c, o in zip(q.letters, q.options)) + "\n答案："
        return text + self.cot_cue(cot)

    def cot_cue(self, cot: bool) -> str:
        return "让我们一步一步思考，\n1." if cot else ""

    def continuation(self, letter: str, style: str = "official") -> str:
        """The scored continuation for an option letter: lm-eval puts its target_delimiter (a space) first."""
        return (" " if style == "lm-eval" else "") + letter

    def answer_text(self, q: Question, style: str = "official", cot: bool = False) -> str:
        """What follows `答案：` in a few-shot example."""
        if cot:
            if not q.explanation:
                raise ExamDataError(f"{q.subject} dev item {q.id} has no explanation: CoT few-shot needs one")
            return f"让我们一步一步思考，\n{q.explanation}\n所以答案是{q.answer}。"
        return self.continuation(q.answer or "", style)
