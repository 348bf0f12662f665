"""C-Eval multiple choice, done the way the paper and lm-evaluation-harness do it: data, prompts, scoring.

    from medqwen.ceval import load_questions, build_prompt, score_questions
    questions = load_questions("data/benchmark/ceval-exam", "clinical_medicine", "val")
    shots = load_questions("data/benchmark/ceval-exam", "clinical_medicine", "dev")[:5]
    prompt = build_prompt(questions[0], shots, style="official")  # the C-Eval paper's answer-only prompt

Two prompt styles:
  official  the C-Eval paper's answer-only prompt; the option letter follows `答案：` directly ("A").
  lm-eval   lm-evaluation-harness 0.4.13 `ceval-valid`: no 考试 in the instruction, few-shot answers and the
            scored continuations carry a leading space (" A"), shots joined by a blank line.
Two scorings:
  loglik    log P(letter | prompt) for A/B/C/D; the argmax is the answer (what both reference harnesses do).
  generate  greedy decoding, then answer extraction (CoT uses the official C-Eval extraction rules).
Backends live in `medqwen.backends` (HF transformers, vLLM offline, any OpenAI-compatible server).
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medqwen.jsonl import iter_jsonl_objects, write_jsonl

CHOICES = ("A", "B", "C", "D")

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
GROUPS = {
    "medical": ["clinical_medicine", "basic_medicine", "physician", "veterinary_medicine"],
    "all": list(SUBJECTS),
}
SPLIT_COLUMNS = {  # the released CSV layout
    "dev": ["id", "question", "A", "B", "C", "D", "answer", "explanation"],
    "val": ["id", "question", "A", "B", "C", "D", "answer"],
    "test": ["id", "question", "A", "B", "C", "D"],
}


class CevalDataError(ValueError):
    """A C-Eval file that is missing or does not have the released layout."""


@dataclass
class Question:
    """One C-Eval item; `answer` is None on the test split (answers are not public)."""

    subject: str
    split: str
    id: str
    question: str
    options: tuple[str, str, str, str]
    answer: str | None = None
    explanation: str | None = None


def expand_subjects(names: Sequence[str]) -> list[str]:
    """Subject names with groups (`medical`, `all`) expanded, order kept, unknown names rejected."""
    out: list[str] = []
    for name in names:
        for subject in GROUPS.get(name, [name]):
            if subject not in SUBJECTS:
                raise ValueError(f"unknown C-Eval subject {subject!r}; groups: {sorted(GROUPS)}; "
                                 f"subjects: {', '.join(SUBJECTS)}")
            if subject not in out:
                out.append(subject)
    return out


# ----------------------------------------------------------------------------------------------------------
# Data: the released CSV layout (<dir>/<split>/<subject>_<split>.csv) or a Hugging Face `datasets` copy.


def load_questions(data_dir: str | Path, subject: str, split: str) -> list[Question]:
    """The questions of one subject and split, from the CSV layout or a local `datasets` copy."""
    data_dir = Path(data_dir)
    csv_path = data_dir / split / f"{subject}_{split}.csv"
    if csv_path.is_file():
        return read_csv_split(csv_path, subject, split)
    hf_dir = data_dir / subject
    if hf_dir.is_dir():
        return read_hf_split(hf_dir, subject, split)
    raise CevalDataError(
        f"no C-Eval data for {subject}/{split}: expected {csv_path} (released CSV layout) or {hf_dir}/ "
        f"(Hugging Face datasets layout). Get it with `python data/get_ceval.py` (hub, or --zip ceval-exam.zip); "
        f"the repository ships a small team-written sample in data/benchmark/ceval-exam/.")


def _make_question(row: dict[str, Any], subject: str, split: str, where: str) -> Question:
    """Validate one row (any layout) and turn it into a Question."""
    for col in ("question", *CHOICES):
        if row.get(col) is None or str(row[col]).strip() == "":
            raise CevalDataError(f"{where}: empty or missing '{col}'")
    answer = row.get("answer")
    answer = str(answer).strip() if answer not in (None, "") else None
    if split != "test" and answer not in CHOICES:
        raise CevalDataError(f"{where}: answer must be one of A/B/C/D, got {row.get('answer')!r}")
    return Question(subject=subject, split=split, id=str(row["id"]).strip(), question=str(row["question"]),
                    options=tuple(str(row[c]) for c in CHOICES),  # type: ignore[arg-type]
                    answer=answer if split != "test" else None,
                    explanation=(str(row["explanation"]) if row.get("explanation") not in (None, "") else None))


def read_csv_split(path: str | Path, subject: str, split: str) -> list[Question]:
    """Read a released C-Eval CSV (quoted fields may hold newlines); errors name file and line."""
    path = Path(path)
    expected = SPLIT_COLUMNS[split]
    with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig: tolerate a BOM from spreadsheet tools
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise CevalDataError(f"{path}: empty file; expected header {','.join(expected)}") from None
        except csv.Error as err:
            raise CevalDataError(f"{path}: not a valid CSV: {err}") from None
        # dev must carry the explanation (CoT few-shot); val/test may carry extra columns (the hub export does).
        if header[: len(expected)] != expected:
            raise CevalDataError(f"{path}: header {header} does not match the released layout {expected}")
        questions = []
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row:
                    continue
                if len(row) != len(header):
                    raise CevalDataError(f"{where}: {len(row)} fields, expected {len(header)} (a stray comma or "
                                         f"an unclosed quote?)")
                questions.append(_make_question(dict(zip(header, row)), subject, split, where))
        except csv.Error as err:
            raise CevalDataError(f"{path}:{reader.line_num}: not a valid CSV: {err}") from None
    if not questions:
        raise CevalDataError(f"{path}: no questions")
    return questions


def read_hf_split(folder: str | Path, subject: str, split: str) -> list[Question]:
    """Read a subject saved by `datasets` (save_to_disk folder, or the hub's parquet files)."""
    import datasets

    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file():
        dataset_dict = datasets.load_from_disk(str(folder))
        if split not in dataset_dict:
            raise CevalDataError(f"{folder}: no split '{split}' (has {list(dataset_dict)})")
        rows = dataset_dict[split]
    else:
        files = sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"{split}/*.parquet"))
        if not files:
            raise CevalDataError(f"{folder}: neither a save_to_disk folder nor {split}-*.parquet files")
        rows = datasets.load_dataset("parquet", data_files=[str(p) for p in files], split="train")
    missing = [c for c in SPLIT_COLUMNS[split] if c not in rows.column_names]
    if missing:
        raise CevalDataError(f"{folder} ({split}): missing columns {missing}")
    return [_make_question(row, subject, split, f"{folder} ({split}) row {i}") for i, row in enumerate(rows)]


# ----------------------------------------------------------------------------------------------------------
# Prompts.

STYLES = ("official", "lm-eval")


def instruction(subject: str, style: str = "official") -> str:
    """The task description line; the paper says 考试, lm-eval's ceval-valid drops it."""
    name = SUBJECTS.get(subject, subject)
    if style == "official":
        return f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n"
    if style == "lm-eval":
        return f"以下是中国关于{name}的单项选择题，请选出其中的正确答案。\n\n"
    raise ValueError(f"unknown prompt style {style!r}; choose from {STYLES}")


def format_question(q: Question, style: str = "official", cot: bool = False) -> str:
    """The question, its four options and `答案：` (the CoT cue follows it in CoT mode)."""
    text = q.question.strip() if style == "lm-eval" else q.question  # lm-eval: {{question.strip()}}
    text += "".join(f"\n{c}. {o}" for c, o in zip(CHOICES, q.options)) + "\n答案："
    return text + ("让我们一步一步思考，\n1." if cot else "")


def answer_text(q: Question, style: str = "official", cot: bool = False) -> str:
    """What follows `答案：` in a few-shot example."""
    if cot:
        if not q.explanation:
            raise CevalDataError(f"{q.subject} dev item {q.id} has no explanation: CoT few-shot needs one")
        return f"让我们一步一步思考，\n{q.explanation}\n所以答案是{q.answer}。"
    return continuation(q.answer or "", style)


def continuation(letter: str, style: str = "official") -> str:
    """The scored continuation for an option letter: lm-eval puts its target_delimiter (a space) first."""
    return (" " if style == "lm-eval" else "") + letter


def build_prompt(q: Question, shots: Sequence[Question] = (), style: str = "official", cot: bool = False) -> str:
    """A plain-text k-shot prompt, character for character as the reference harness renders it."""
    # C-Eval: every example ends with "\n\n"; lm-eval: description + "\n\n".join(shots) + "\n\n" + question.
    # Both give the same shape; the styles differ in the instruction, the answer delimiter and strip().
    head = instruction(q.subject, style)
    head += "".join(format_question(s, style) + answer_text(s, style, cot) + "\n\n" for s in shots)
    return head + format_question(q, style, cot)


def build_messages(q: Question, shots: Sequence[Question] = (), style: str = "official",
                   cot: bool = False) -> list[dict[str, str]]:
    """The same prompt as a chat: few-shot examples as earlier turns, the instruction in the first user turn
    (how C-Eval's own evaluator prompts chat models). The answer letter is the assistant's first token."""
    messages: list[dict[str, str]] = []
    first = instruction(q.subject, style)
    for s in shots:
        messages.append({"role": "user", "content": first + format_question(s, style)})
        messages.append({"role": "assistant", "content": answer_text(s, style, cot).lstrip(" ")})
        first = ""
    messages.append({"role": "user", "content": first + format_question(q, style)})
    return messages


# ----------------------------------------------------------------------------------------------------------
# Answer extraction for generated text.

_COT_FINAL = re.compile(r"所以答案是(.+?)。", re.M)
_COT_PATTERNS = [re.compile(p, re.M) for p in (
    r"([ABCD])是正确的", r"选项([ABCD])正确", r"答案为([ABCD])", r"答案是([ABCD])", r"答案([ABCD])",
    r"选择([ABCD])", r"答案：([ABCD])", r"选择答案([ABCD])")]
LEADING_ANSWER = re.compile(r"^[\s\"'“（(【\[]*(?:答案|正确答案)?\s*(?:是|为|选|：|:)?\s*(?:选项)?\s*([ABCD])(?![A-Za-z])")


def extract_cot_answer(text: str, q: Question | None = None) -> str | None:
    """The official C-Eval extraction (its ChatGLM evaluator): `所以答案是X。`, then answer patterns, then a
    single letter, then a single option text quoted in the reply. None when nothing matches."""
    finals = _COT_FINAL.findall(text)
    if finals and finals[-1] in CHOICES:
        return finals[-1]
    for pattern in _COT_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    letters = re.findall(r"[ABCD]", text)
    if len(letters) == 1:
        return letters[0]
    if q is not None:
        hits = [c for c, o in zip(CHOICES, q.options) if str(o) in text]
        if len(hits) == 1:
            return hits[0]
    return None


def extract_answer(text: str, q: Question | None = None, cot: bool = False) -> str | None:
    """The option a reply chooses: a leading letter ("B", "B.", "答案：B", "（B）") first, then the CoT rules."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)  # hybrid models may think first
    if not cot:
        m = LEADING_ANSWER.match(text)
        if m:
            return m.group(1)
    return extract_cot_answer(text, q)


# ----------------------------------------------------------------------------------------------------------
# Scoring.


@dataclass
class Prediction:
    """One scored question: what predictions.jsonl holds per line."""

    subject: str
    id: str
    prompt: str
    logprobs: dict[str, float] | None
    output: str | None
    pred: str | None
    gold: str | None
    correct: bool | None


def render_prompt(q: Question, shots: Sequence[Question], style: str, cot: bool, tokenizer=None,
                  chat: bool = False, enable_thinking: bool | None = None) -> str:
    """The prompt text a completion model sees: plain, or our chat template with a generation prompt."""
    if not chat:
        return build_prompt(q, shots, style, cot)
    if tokenizer is None:
        raise ValueError("chat prompting needs a tokenizer with a chat template (a local --model folder)")
    from medqwen.chat import render

    text = render(tokenizer, build_messages(q, shots, style, cot), add_generation_prompt=True,
                  enable_thinking=enable_thinking)
    return text + ("让我们一步一步思考，\n1." if cot else "")


def score_questions(backend, questions: Sequence[Question], shots: Sequence[Question], *, style: str = "official",
                    scoring: str = "loglik", cot: bool = False, chat: bool = False, max_new_tokens: int = 16,
                    enable_thinking: bool | None = None) -> list[Prediction]:
    """Score the questions of ONE subject (they share the few-shot head, which backends may reuse)."""
    tokenizer = getattr(backend, "tokenizer", None)
    prompts = [render_prompt(q, shots, style, cot, tokenizer, chat, enable_thinking) for q in questions]
    preds: list[Prediction] = []
    if scoring == "loglik":
        if cot:
            raise ValueError("CoT needs --scoring generate (loglik reads the letter right after the prompt)")
        # In chat mode the letter is the assistant's first token, with no delimiter in either style.
        options = [c if chat else continuation(c, style) for c in CHOICES]
        scores = backend.loglik(prompts, options)
        for q, prompt, row in zip(questions, prompts, scores):
            pred = CHOICES[int(np.argmax(row))]
            preds.append(Prediction(q.subject, q.id, prompt, {c: float(v) for c, v in zip(CHOICES, row)}, None,
                                    pred, q.answer, None if q.answer is None else pred == q.answer))
    elif scoring == "generate":
        outputs = backend.generate(prompts, max_new_tokens)
        for q, prompt, out in zip(questions, prompts, outputs):
            pred = extract_answer(out, q, cot)
            preds.append(Prediction(q.subject, q.id, prompt, None, out, pred, q.answer,
                                    None if q.answer is None else pred == q.answer))
    else:
        raise ValueError(f"unknown scoring {scoring!r}: loglik or generate")
    return preds


def run_benchmark(backend, data_dir: str | Path, subjects: Sequence[str], split: str = "val", k_shot: int = 5,
                  limit: int | None = None, **score_kwargs) -> tuple[list[Prediction], dict[str, float]]:
    """Score every subject; returns the predictions and timing (seconds, questions/s)."""
    if not 0 <= k_shot <= 5:
        raise ValueError(f"k_shot must be 0-5 (C-Eval's dev split has 5 items per subject), got {k_shot}")
    predictions: list[Prediction] = []
    start = time.perf_counter()
    for subject in expand_subjects(subjects):
        shots = load_questions(data_dir, subject, "dev")[:k_shot] if k_shot else []
        if len(shots) < k_shot:
            raise CevalDataError(f"{subject}: {k_shot}-shot needs {k_shot} dev items, found {len(shots)}")
        questions = load_questions(data_dir, subject, split)[:limit]
        predictions += score_questions(backend, questions, shots, **score_kwargs)
        print(f"{subject}/{split}: {len(questions)} questions scored", flush=True)
    seconds = time.perf_counter() - start
    return predictions, {"seconds": seconds, "questions_per_s": len(predictions) / max(seconds, 1e-9)}


# ----------------------------------------------------------------------------------------------------------
# Results: metrics, files, comparisons.


def summarize(predictions: Sequence[Prediction], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy, n and a 95% bootstrap CI, overall and per subject (test split: counts only)."""
    from medqwen.stats import bootstrap_ci

    def block(rows: Sequence[Prediction]) -> dict[str, Any]:
        graded = [p.correct for p in rows if p.correct is not None]
        out: dict[str, Any] = {"n": len(rows), "n_unparsed": sum(p.pred is None for p in rows)}
        if graded:
            out["accuracy"] = float(np.mean(graded))
            out["ci95"] = list(bootstrap_ci(graded, n_boot=n_boot, seed=seed))
        return out

    subjects = sorted({p.subject for p in predictions})
    return {**block(predictions), "per_subject": {s: block([p for p in predictions if p.subject == s])
                                                  for s in subjects}}


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """predictions.jsonl: one JSON object per question."""
    return write_jsonl((asdict(p) for p in predictions), path)


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read predictions.jsonl back (for --compare)."""
    path = Path(path)
    rows = []
    for n, record in iter_jsonl_objects(path, error=CevalDataError):
        try:
            rows.append(Prediction(**record))
        except TypeError as err:
            raise CevalDataError(f"{path}:{n}: not a prediction line ({err})") from None
    return rows


def submission(predictions: Sequence[Prediction]) -> dict[str, dict[str, str]]:
    """C-Eval's test submission format: {subject: {id: letter}} (unparsed replies fall back to A)."""
    out: dict[str, dict[str, str]] = {}
    for p in predictions:
        out.setdefault(p.subject, {})[p.id] = p.pred or "A"
    return out


def results_table(summary: dict[str, Any]) -> str:
    """Markdown table: one row per subject and an overall row."""
    from medqwen.reporting import markdown_table

    def row(name: str, b: dict[str, Any]) -> list[Any]:
        ci = b.get("ci95")
        return [name, b["n"], b.get("accuracy", "-"), f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-", b["n_unparsed"]]

    rows = [row(s, b) for s, b in summary["per_subject"].items()]
    if len(rows) > 1:
        rows.append(row("**overall**", summary))
    return markdown_table(rows, ["subject", "n", "accuracy", "95% CI", "unparsed"])


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, n_boot: int = 1000,
                 seed: int = 0) -> tuple[str, dict[str, Any]]:
    """Side-by-side accuracy of several runs on the questions they share, each vs the first with McNemar's
    exact test; writes compare.md, compare.json and compare.png (bars with 95% CIs)."""
    from medqwen.reporting import markdown_table
    from medqwen.stats import bootstrap_ci, mcnemar_exact

    if len(run_dirs) < 2:
        raise ValueError("--compare needs at least two run folders")
    runs = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "predictions.jsonl").is_file():
            raise FileNotFoundError(f"{d}/predictions.jsonl not found: run benchmark_ceval.py with --output_dir {d}")
        meta = json.loads((d / "metrics.json").read_text(encoding="utf-8")) if (d / "metrics.json").is_file() else {}
        label = meta.get("summary", {}).get("model_type") or d.name
        preds = {(p.subject, p.id): p for p in read_predictions(d / "predictions.jsonl") if p.correct is not None}
        runs.append((label, d, preds))
    labels = [r[0] for r in runs]
    if len(set(labels)) < len(labels):  # e.g. two LoRA runs: fall back to folder names
        runs = [(str(d), d, p) for _, d, p in runs]
    keys = sorted(set.intersection(*(set(p) for _, _, p in runs)))
    if not keys:
        raise ValueError("the runs share no graded questions (different subjects or the test split?)")
    first = [runs[0][2][k].correct for k in keys]
    rows, detail = [], []
    for label, d, preds in runs:
        correct = [preds[k].correct for k in keys]
        acc, ci = float(np.mean(correct)), bootstrap_ci(correct, n_boot=n_boot, seed=seed)
        test = mcnemar_exact(correct, first) if label != runs[0][0] else None
        rows.append([label, len(keys), acc, f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                     "-" if test is None else f"+{test['a_only']} / -{test['b_only']}",
                     "-" if test is None else f"{test['p_value']:.3g}"])
        detail.append({"run": label, "dir": str(d), "n": len(keys), "accuracy": acc, "ci95": list(ci),
                       "mcnemar_vs_first": test})
    table = markdown_table(rows, ["run", "n", "accuracy", "95% CI", f"vs {runs[0][0]}: gained / lost",
                                  "McNemar p (exact)"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(table + "\n", encoding="utf-8")
    (out_dir / "compare.json").write_text(json.dumps(detail, ensure_ascii=False, indent=2), encoding="utf-8")
    plot_comparison(detail, out_dir / "compare.png")
    return table, {"runs": detail, "n_shared": len(keys)}


def plot_comparison(detail: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Bar chart of accuracy with 95% bootstrap CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = [d["accuracy"] for d in detail]
    err = [[a - d["ci95"][0] for a, d in zip(acc, detail)], [d["ci95"][1] - a for a, d in zip(acc, detail)]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(detail), 3.6))
    ax.bar([d["run"] for d in detail], acc, yerr=err, capsize=6, color="#4C72B0")
    ax.axhline(0.25, ls="--", lw=1, color="gray", label="chance (4 options)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.set_title(f"C-Eval, n={detail[0]['n']} shared questions")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
