"""Convert multiple-choice questions (C-Eval/CMMLU CSV, JSONL) into MCQ JSONL for trainer/train_grpo.py.

    python data/convert_mcq.py --input ceval-exam/dev/clinical_medicine_dev.csv \
        --input ceval-exam/val/clinical_medicine_val.csv --output data/grpo_mcq.jsonl
    python data/convert_mcq.py --input cmmlu/dev/clinical_knowledge.csv --subject clinical_knowledge
    python data/convert_mcq.py --input my_questions.jsonl          # just validate and normalise

Accepted: C-Eval CSV (id,question,A,B,C,D,answer[,explanation]; the test split has no answers, so it is
refused), CMMLU CSV (,Question,A,B,C,D,Answer) and JSONL with question + options (a list of 2-8, an A.. object,
or top-level A.. keys) + answer letter. Every bad row stops the run with file:line; nothing is written then.
Writes <output> and prints a table of questions per subject and answer letter.
"""

from collections import Counter

from medqwen.cli import run_script
from medqwen.configlib import UserError
from medqwen.reporting import markdown_table
from medqwen.train.config import McqConvertConfig
from medqwen.train.mcq import read_mcq_file, write_mcq_jsonl


def main(cfg: McqConvertConfig) -> list:
    if not cfg.input:
        raise UserError("give at least one --input file (.csv or .jsonl)")
    questions = []
    for path in cfg.input:
        questions += read_mcq_file(path, cfg.subject)
        print(f"{path}: {len(questions)} questions so far")
    duplicates = len(questions) - len({(q.question.strip(), q.options) for q in questions})
    write_mcq_jsonl(questions, cfg.output)
    subjects = Counter(q.subject for q in questions)
    letters = Counter(q.answer for q in questions)
    rows = [[s, n, *(sum(q.answer == c for q in questions if q.subject == s) for c in "ABCD")]
            for s, n in sorted(subjects.items())]
    rows.append(["**all**", len(questions), *(letters[c] for c in "ABCD")])
    print(markdown_table(rows, ["subject", "questions", "A", "B", "C", "D"]))
    if duplicates:
        print(f"note: {duplicates} question(s) repeat an earlier one (same text and options); kept")
    print(f"wrote {cfg.output}")
    return questions


if __name__ == "__main__":
    run_script(McqConvertConfig, main)
