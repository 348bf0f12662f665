"""The exams the benchmark scores, one module each over a shared base (like lm-eval's tasks):

    ceval    C-Eval (exams/ceval.py)      52 subjects, 4 options     subjects named bare: clinical_medicine
    cmmlu    CMMLU (exams/cmmlu.py)       67 subjects, 4 options     cmmlu/anatomy
    cmexam   CMExam (exams/cmexam.py)     one subject, up to 5       cmexam/physician (or just cmexam)

Beside them: base.py (the Question and Exam base), runner.py (what every exam shares: prompts, answer extraction,
scoring, statistics, reports, the forgetting check) and backends.py (where the model runs: HF, vLLM offline, an
OpenAI-compatible server).

Subject groups (what `--subjects` accepts besides subject names):

    medical   C-Eval clinical_medicine, basic_medicine, physician, veterinary_medicine + CMMLU's nine medical
              subjects + CMExam: the pooled medical score
    general   the forgetting check's fixed non-medical set: C-Eval computer_network, college_economics,
              modern_chinese_history, law, high_school_mathematics + CMMLU computer_science, world_history,
              economics, high_school_mathematics, jurisprudence
    <exam>/<group>   one exam's part of a group (ceval/medical, cmmlu/general, cmmlu/all, ...); `all` = C-Eval's 52
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from medqwen.configlib import UserError
from medqwen.exams.base import qualified

EXAM_NAMES = ("ceval", "cmmlu", "cmexam")
CROSS_GROUPS = ("medical", "general")


@lru_cache(maxsize=None)
def get_exam(name: str):
    """The Exam object of one exam name."""
    if name == "ceval":
        from medqwen.exams.ceval import CevalExam

        return CevalExam()
    if name == "cmmlu":
        from medqwen.exams.cmmlu import CmmluExam

        return CmmluExam()
    if name == "cmexam":
        from medqwen.exams.cmexam import CmexamExam

        return CmexamExam()
    raise UserError(f"unknown exam {name!r}; exams: {', '.join(EXAM_NAMES)}")


def split_key(key: str) -> tuple[str, str]:
    """`cmmlu/anatomy` -> ("cmmlu", "anatomy"); a bare name is C-Eval's (as before)."""
    exam, _, subject = key.rpartition("/")
    return (exam or "ceval"), subject


def group_members(name: str) -> list[str] | None:
    """The subject keys of a group name, or None when the name is not a group."""
    if name in CROSS_GROUPS:
        return [k for exam in EXAM_NAMES for k in group_members(f"{exam}/{name}") or []]
    if name == "all":
        return group_members("ceval/all")
    if name in EXAM_NAMES:  # `cmexam` alone: the whole exam's `all`
        return group_members(f"{name}/all")
    exam, sub = split_key(name)
    if exam in EXAM_NAMES and sub in get_exam(exam).groups:
        return [qualified_key(exam, s) for s in get_exam(exam).groups[sub]]
    return None


def qualified_key(exam: str, subject: str) -> str:
    return qualified(exam, subject)


def expand_subjects(names: Sequence[str]) -> list[str]:
    """Subject keys with groups expanded, order kept, unknown names rejected."""
    out: list[str] = []
    for name in names:
        members = group_members(name)
        for key in members if members is not None else [name]:
            exam, subject = split_key(key)
            if exam not in EXAM_NAMES or subject not in get_exam(exam).subjects:
                known = ", ".join(sorted(get_exam(exam).subjects)) if exam in EXAM_NAMES else ", ".join(EXAM_NAMES)
                raise UserError(f"unknown {'C-Eval' if exam == 'ceval' else exam} subject {subject!r}; groups: "
                                 f"medical, general, all, <exam>/<group>; subjects: {known}")
            if key not in out:
                out.append(key)
    return out


def is_group(names: Sequence[str]) -> list[bool]:
    """Per name: whether it is a group (whose missing subjects may be skipped) rather than a subject."""
    return [group_members(n) is not None for n in names]
