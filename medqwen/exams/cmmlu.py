"""CMMLU (haonan-li/CMMLU): 67 subjects, four options, in the official repository's layout.

    <cmmlu_dir>/{dev,test}/<subject>.csv   columns `,Question,A,B,C,D,Answer` (the first, unnamed, is a row number)

dev holds 5 answered items per subject (the few-shot examples), test the scored items (all answered). The prompt
is CMMLU's own evaluation (src/mp_utils.py: gen_prompt + format_example), character for character:

    以下是关于{中文科目名}的单项选择题，请直接给出正确答案的选项。\n\n
    题目：{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案是：{X}\n\n      (one per few-shot example)
    题目：{question}\nA. ...\n答案是：                                        (scored: the next letter)
"""

from __future__ import annotations

from pathlib import Path

from medqwen.configlib import UserError
from medqwen.exams.base import LETTERS, Exam, ExamDataError, Question, Skipped, check_answer, csv_records

# subject -> Chinese name, as in CMMLU's src/categories.py (name_en2zh); the name goes into the instruction.
SUBJECTS = {
    "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
    "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试",
    "chinese_driving_rule": "中国驾驶规则",
    "chinese_food_culture": "中国饮食文化", "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史",
    "chinese_literature": "中国文学", "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学", "college_education": "大学教育学",
    "college_engineering_hydrology": "大学工程水文学", "college_law": "大学法律", "college_mathematics": "大学数学",
    "college_medical_statistics": "大学医学统计", "college_medicine": "大学医学", "computer_science": "计算机科学",
    "computer_security": "计算机安全", "conceptual_physics": "概念物理学",
    "construction_project_management": "建设工程管理", "economics": "经济学", "education": "教育学",
    "electrical_engineering": "电气工程", "elementary_chinese": "小学语文", "elementary_commonsense": "小学常识",
    "elementary_information_and_technology": "小学信息技术", "elementary_mathematics": "初等数学",
    "ethnology": "民族学", "food_science": "食品科学", "genetics": "遗传学", "global_facts": "全球事实",
    "high_school_biology": "高中生物", "high_school_chemistry": "高中化学", "high_school_geography": "高中地理",
    "high_school_mathematics": "高中数学", "high_school_physics": "高中物理学", "high_school_politics": "高中政治",
    "human_sexuality": "人类性行为", "international_law": "国际法学", "journalism": "新闻学", "jurisprudence": "法理学",
    "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学", "machine_learning": "机器学习",
    "management": "管理学", "marketing": "市场营销", "marxist_theory": "马克思主义理论", "modern_chinese": "现代汉语",
    "nutrition": "营养学", "philosophy": "哲学", "professional_accounting": "专业会计", "professional_law": "专业法学",
    "professional_medicine": "专业医学", "professional_psychology": "专业心理学", "public_relations": "公共关系",
    "security_study": "安全研究", "sociology": "社会学", "sports_science": "体育学",
    "traditional_chinese_medicine": "中医中药", "virology": "病毒学", "world_history": "世界历史",
    "world_religions": "世界宗教",
}
MEDICAL = ["anatomy", "clinical_knowledge", "college_medical_statistics", "college_medicine", "genetics", "nutrition",
           "professional_medicine", "traditional_chinese_medicine", "virology"]
# The forgetting check's non-medical subjects: STEM, humanities and social science, no biology or health.
GENERAL = ["computer_science", "world_history", "economics", "high_school_mathematics", "jurisprudence"]
HEADER = ["question", "a", "b", "c", "d", "answer"]  # after the unnamed index column, lower-cased


class CmmluExam(Exam):
    name, title = "cmmlu", "CMMLU"
    subjects = SUBJECTS
    groups = {"medical": MEDICAL, "general": GENERAL, "all": list(SUBJECTS)}
    answered_test = True  # the released test split has its answers
    shot_split = "dev"
    data_hint = ("Get it with `python data/get_ceval.py --benchmark cmmlu` (hub, or --zip cmmlu_v1_0_1.zip); "
                 "the repository ships a small team-written sample in data/benchmark/cmmlu/.")

    def read(self, data_dir: Path, subject: str, split: str, skipped: Skipped) -> list[Question]:
        path = data_dir / split / f"{subject}.csv"
        if not path.is_file():
            raise ExamDataError(f"no CMMLU data for {subject}/{split}: expected {path} (official layout "
                                f"data/{{dev,test}}/<subject>.csv). {self.data_hint}")
        return read_cmmlu_csv(path, subject, split, skipped)

    def instruction(self, q: Question, style: str) -> str:
        return f"以下是关于{SUBJECTS.get(q.subject, q.subject)}的单项选择题，请直接给出正确答案的选项。\n\n"

    def format_question(self, q: Question, style: str = "official", cot: bool = False) -> str:
        if cot:
            raise UserError("chain of thought is defined for C-Eval only, not CMMLU")
        return "题目：" + q.question + "".join(f"\n{c}. {o}" for c, o in zip(q.letters, q.options)) + "\n答案是："


def read_cmmlu_csv(path: str | Path, subject: str, split: str = "test", skipped: Skipped | None = None,
                   exam: str = "cmmlu") -> list[Question]:
    """A CMMLU CSV; malformed rows stop with file:line (or are skipped and counted)."""
    path, skipped = Path(path), Skipped() if skipped is None else skipped

    def check(header: list[str]) -> None:
        if [h.strip().lower() for h in header[1:]] != HEADER:
            raise ExamDataError(f"{path}: header {header} is not CMMLU's `,Question,A,B,C,D,Answer`")

    questions = []
    for where, _, row in csv_records(path, check, skipped):
        try:
            question, options = row[1], tuple(row[2:6])
            if not question.strip():
                raise ExamDataError(f"{where}: empty question")
            answer = check_answer(row[6], LETTERS[:4], where)
        except ExamDataError as err:
            skipped.handle(err)
            continue
        questions.append(Question(subject, split, row[0].strip() or where.rsplit(":", 1)[1], question, options,
                                  answer, exam=exam))
    return questions
