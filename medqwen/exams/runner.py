"""What every exam shares (the exams themselves are in medqwen.exams): prompt dispatch, answer extraction,
scoring, statistics, reports and the forgetting check, done the way the exams' papers and lm-evaluation-harness do.

    from medqwen.exams.ceval import load_questions
    from medqwen.exams.runner import build_prompt, score_questions
    questions = load_questions("data/benchmark/ceval-exam", "clinical_medicine", "val")
    shots = load_questions("data/benchmark/ceval-exam", "clinical_medicine", "dev")[:5]
    prompt = build_prompt(questions[0], shots, style="official")  # the C-Eval paper's answer-only prompt

Prompt styles are the exam's (C-Eval: `official`, the paper's, and `lm-eval`, lm-evaluation-harness 0.4.13
`ceval-valid`; see medqwen/exams/ceval.py). Two scorings:
  loglik    log P(letter | prompt) for A/B/C/D; the argmax is the answer (what both reference harnesses do).
  generate  greedy decoding, then answer extraction (CoT uses the official C-Eval extraction rules).
Backends live in `medqwen.exams.backends` (HF transformers, vLLM offline, any OpenAI-compatible server).
Questions carry their exam (`Question.exam`); prompts dispatch to that exam's format, and nothing assumes four
options. `run_benchmark(..., permute="cyclic")` also scores every question under each cyclic rotation of its
options (the option-order check); multi-answer items (CMExam) are generated and matched as an exact set.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medqwen.chat import render
from medqwen.configlib import UserError
from medqwen.exams import CROSS_GROUPS, EXAM_NAMES, expand_subjects, get_exam, is_group, split_key
from medqwen.exams.base import LETTERS, ExamDataError, Question, Skipped, qualified, rotate
from medqwen.exams.ceval import CHOICES, GROUPS, SUBJECTS, load_questions, read_csv_split
from medqwen.jsonl import iter_jsonl_objects, write_jsonl
from medqwen.reporting import markdown_table, pyplot, save_figure
from medqwen.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap_diff_ci

# Re-exported: C-Eval's data names lived here before medqwen/exams/ceval.py, and users' scripts import them from here.
__all__ = ["GROUPS", "SUBJECTS", "Question", "expand_subjects", "load_questions", "read_csv_split", "rotate"]

CevalDataError = ExamDataError  # the name callers catch


# ----------------------------------------------------------------------------------------------------------
# Prompts: dispatch to each question's exam.


def instruction(subject: str, style: str = "official") -> str:
    """C-Eval's task description line for a subject."""
    return get_exam("ceval").instruction(Question(subject, "", "", "", ()), style)


def format_question(q: Question, style: str = "official", cot: bool = False) -> str:
    return get_exam(q.exam).format_question(q, style, cot)


def answer_text(q: Question, style: str = "official", cot: bool = False) -> str:
    return get_exam(q.exam).answer_text(q, style, cot)


def continuation(letter: str, style: str = "official", exam: str = "ceval") -> str:
    return get_exam(exam).continuation(letter, style)


def build_prompt(q: Question, shots: Sequence[Question] = (), style: str = "official", cot: bool = False) -> str:
    """A plain-text k-shot prompt, character for character as the question's exam's reference renders it."""
    # C-Eval: every example ends with "\n\n"; lm-eval: description + "\n\n".join(shots) + "\n\n" + question.
    # Both give the same shape; the styles differ in the instruction, the answer delimiter and strip().
    return get_exam(q.exam).build_prompt(q, shots, style, cot)


def build_messages(q: Question, shots: Sequence[Question] = (), style: str = "official",
                   cot: bool = False) -> list[dict[str, str]]:
    """The same prompt as a chat: few-shot examples as earlier turns, the instruction in the first user turn
    (how C-Eval's own evaluator prompts chat models). The answer letter is the assistant's first token."""
    return get_exam(q.exam).build_messages(q, shots, style, cot)


# ----------------------------------------------------------------------------------------------------------
# Answer extraction for generated text.

_COT_FINAL = re.compile(r"所以答案是(.+?)。", re.M)
_COT_TEMPLATES = (r"([{L}])是正确的", r"选项([{L}])正确", r"答案为([{L}])", r"答案是([{L}])", r"答案([{L}])",
                  r"选择([{L}])", r"答案：([{L}])", r"选择答案([{L}])")
_LEAD = r"^[\s\"'“（(【\[]*(?:答案|正确答案)?\s*(?:是|为|选|：|:)?\s*(?:选项)?\s*"
LEADING_ANSWER = re.compile(_LEAD + r"([A-H])(?![A-Za-z])")
LEADING_ANSWERS = re.compile(_LEAD + r"([A-H](?:[\s,，、和及与]*[A-H])*)(?![A-Za-z])")


def _letters(q: Question | None) -> str:
    return "".join(q.letters) if q is not None else "".join(CHOICES)


def _cot_patterns(letters: str) -> list[re.Pattern]:
    return [re.compile(t.replace("{L}", letters), re.M) for t in _COT_TEMPLATES]


def extract_cot_answer(text: str, q: Question | None = None) -> str | None:
    """The official C-Eval extraction (its ChatGLM evaluator): `所以答案是X。`, then answer patterns, then a
    single letter, then a single option text quoted in the reply. None when nothing matches. The letters are
    the question's (A-D without a question)."""
    letters = _letters(q)
    finals = _COT_FINAL.findall(text)
    if finals and finals[-1] in tuple(letters):
        return finals[-1]
    for pattern in _cot_patterns(letters):
        m = pattern.search(text)
        if m:
            return m.group(1)
    found = re.findall(f"[{letters}]", text)
    if len(found) == 1:
        return found[0]
    if q is not None:
        hits = [c for c, o in zip(q.letters, q.options) if str(o) in text]
        if len(hits) == 1:
            return hits[0]
    return None


def extract_answer(text: str, q: Question | None = None, cot: bool = False) -> str | None:
    """The option a reply chooses: a leading letter ("B", "B.", "答案：B", "（B）") first, then the CoT rules."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)  # hybrid models may think first
    if not cot:
        m = LEADING_ANSWER.match(text)
        if m and m.group(1) in _letters(q):
            return m.group(1)
    return extract_cot_answer(text, q)


def extract_answers(text: str, q: Question | None = None) -> str | None:
    """The option set a reply to a multi-answer question chooses: leading letters ("ABD", "A、B、D", "答案：A,C"),
    sorted; None when there are none or one is not an option."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    m = LEADING_ANSWERS.match(text)
    if not m:
        return None
    chosen = set(re.findall(r"[A-H]", m.group(1)))
    return "".join(sorted(chosen)) if chosen <= set(_letters(q)) else None


# ----------------------------------------------------------------------------------------------------------
# Scoring.


@dataclass
class Prediction:
    """One scored question: what predictions.jsonl holds per line. `rotation` r > 0: the question with its
    options cyclically rotated by r (the option-order check); `multi`: a multi-answer item (exact-set match)."""

    subject: str
    id: str
    prompt: str
    logprobs: dict[str, float] | None
    output: str | None
    pred: str | None
    gold: str | None
    correct: bool | None
    exam: str = "ceval"
    rotation: int = 0
    multi: bool = False

    @property
    def key(self) -> str:
        return qualified(self.exam, self.subject)


def render_prompt(q: Question, shots: Sequence[Question], style: str, cot: bool, tokenizer=None,
                  chat: bool = False, enable_thinking: bool | None = None) -> str:
    """The prompt text a completion model sees: plain, or our chat template with a generation prompt."""
    if not chat:
        return build_prompt(q, shots, style, cot)
    if tokenizer is None:
        raise UserError("chat prompting needs a tokenizer with a chat template (a local --model folder)")

    text = render(tokenizer, build_messages(q, shots, style, cot), add_generation_prompt=True,
                  enable_thinking=enable_thinking)
    return text + get_exam(q.exam).cot_cue(cot)


def score_questions(backend, questions: Sequence[Question], shots: Sequence[Question], *, style: str = "official",
                    scoring: str = "loglik", cot: bool = False, chat: bool = False, max_new_tokens: int = 16,
                    enable_thinking: bool | None = None, rotation: int | Sequence[int] = 0) -> list[Prediction]:
    """Score the questions of ONE subject (they share the few-shot head, which backends may reuse). `rotation`:
    the option rotation each question was built with (one for all, or one per question), recorded only.

    loglik reads every option letter the questions have (A-D, A-E, ...) after the prompt; a question's answer is
    the argmax over its own options. Multi-answer questions are always generated (exact-set match)."""
    rotations = [rotation] * len(questions) if isinstance(rotation, int) else list(rotation)
    if any(q.multi for q in questions):
        single = [q for q in questions if not q.multi]
        rotation = [r for q, r in zip(questions, rotations) if not q.multi]
        multi = [q for q in questions if q.multi]
        out = score_questions(backend, single, shots, style=style, scoring=scoring, cot=cot, chat=chat,
                              max_new_tokens=max_new_tokens, enable_thinking=enable_thinking, rotation=rotation)
        return out + score_multi(backend, multi, shots, style=style, chat=chat, max_new_tokens=max_new_tokens,
                                 enable_thinking=enable_thinking)
    if not questions:
        return []
    shots = [s for s in shots if not s.multi]
    tokenizer = getattr(backend, "tokenizer", None)
    prompts = [render_prompt(q, shots, style, cot, tokenizer, chat, enable_thinking) for q in questions]
    preds: list[Prediction] = []
    if scoring == "loglik":
        if cot:
            raise UserError("CoT needs --scoring generate (loglik reads the letter right after the prompt)")
        letters = sorted({c for q in questions for c in q.letters}, key=LETTERS.index)
        exam = get_exam(questions[0].exam)
        # In chat mode the letter is the assistant's first token, with no delimiter in either style.
        options = [c if chat else exam.continuation(c, style) for c in letters]
        scores = backend.loglik(prompts, options)
        for q, prompt, row, r in zip(questions, prompts, scores, rotations):
            row = [row[letters.index(c)] for c in q.letters]
            pred = q.letters[int(np.argmax(row))]
            preds.append(Prediction(q.subject, q.id, prompt, {c: float(v) for c, v in zip(q.letters, row)}, None,
                                    pred, q.answer, None if q.answer is None else pred == q.answer, q.exam, r))
    elif scoring == "generate":
        outputs = backend.generate(prompts, max_new_tokens)
        for q, prompt, out, r in zip(questions, prompts, outputs, rotations):
            pred = extract_answer(out, q, cot)
            preds.append(Prediction(q.subject, q.id, prompt, None, out, pred, q.answer,
                                    None if q.answer is None else pred == q.answer, q.exam, r))
    else:
        raise UserError(f"unknown scoring {scoring!r}: loglik or generate")
    return preds


def score_multi(backend, questions: Sequence[Question], shots: Sequence[Question], *, style: str = "official",
                chat: bool = False, max_new_tokens: int = 16, enable_thinking: bool | None = None) -> list[Prediction]:
    """Multi-answer questions: greedy generation, the leading letters as a set, correct only on the exact set.
    The few-shot examples are the multi-answer ones among `shots`."""
    if not questions:
        return []
    shots = [s for s in shots if s.multi]
    tokenizer = getattr(backend, "tokenizer", None)
    prompts = [render_prompt(q, shots, style, False, tokenizer, chat, enable_thinking) for q in questions]
    outputs = backend.generate(prompts, max_new_tokens)
    preds = []
    for q, prompt, out in zip(questions, prompts, outputs):
        pred = extract_answers(out, q)
        preds.append(Prediction(q.subject, q.id, prompt, None, out, pred, q.answer, pred == q.answer, q.exam,
                                multi=True))
    return preds


def run_benchmark(backend, data_dir: str | Path | dict[str, str | Path], subjects: Sequence[str], split: str = "val",
                  k_shot: int = 5, limit: int | None = None, permute: str = "none", skip_missing: bool = False,
                  skip_invalid: bool = False, **score_kwargs) -> tuple[list[Prediction], dict[str, Any]]:
    """Score every subject of every exam; returns the predictions and run facts (seconds, questions/s, skipped
    subjects and rows).

    data_dir: C-Eval's folder, or {exam: folder}. permute="cyclic": each single-answer question is also scored
    under every other cyclic rotation of its options (same few-shot head). skip_missing: subjects that came from
    a group and have no data are left out and listed (named subjects always need their data)."""
    if not 0 <= k_shot <= 5:
        raise UserError(f"k_shot must be 0-5 (the exams' dev splits have 5 items per subject), got {k_shot}")
    if permute not in ("none", "cyclic"):
        raise UserError(f"unknown option permutation {permute!r}: none or cyclic")
    dirs = data_dir if isinstance(data_dir, dict) else {"ceval": data_dir}

    named = {k for n, group in zip(subjects, is_group(subjects)) if not group for k in expand_subjects([n])}
    predictions: list[Prediction] = []
    missing: list[str] = []
    invalid: dict[str, list[str]] = {}
    ungraded: dict[str, dict[str, int]] = {}
    start = time.perf_counter()
    for key in expand_subjects(subjects):
        exam_name, subject = split_key(key)
        exam = get_exam(exam_name)
        if exam_name not in dirs:
            raise UserError(f"no data folder given for {exam.title} (subject {key})")
        skipped, shot_skipped = Skipped(skip_invalid), Skipped(skip_invalid)
        try:
            graded = exam.graded_split(split)
            shot_pool = exam.load(dirs[exam_name], subject, exam.shot_split, shot_skipped) if k_shot else []
            questions = exam.load(dirs[exam_name], subject, graded, skipped)[:limit]
        except ExamDataError as err:
            if not skip_missing or key in named or not str(err).startswith("no "):
                raise
            missing.append(key)
            print(f"{key}: skipped, no data ({err})", flush=True)
            continue
        if skipped.ungraded:  # rows of the scored split without an answer: skipped and counted, never fatal
            ungraded[key] = dict(skipped.ungraded)
            print(f"{key}: {len(skipped.ungraded_rows)} rows without an answer skipped and counted "
                  f"({skipped.ungraded}); first: {skipped.ungraded_rows[0]}", flush=True)
        skipped.rows += shot_skipped.rows
        if skipped.rows:
            invalid[key] = skipped.rows
            print(f"{key}: {len(skipped)} malformed rows skipped (--skip_invalid); first: {skipped.rows[0]}",
                  flush=True)
        singles = [s for s in shot_pool if not s.multi][:k_shot]
        shots = singles + [s for s in shot_pool if s.multi][:k_shot]
        if len(singles) < k_shot:
            raise ExamDataError(f"{key}: {k_shot}-shot needs {k_shot} {exam.shot_split} items, found {len(singles)}")
        # every rotation in one call: they share the subject's few-shot head, computed once
        rotations = [0] * len(questions)
        if permute == "cyclic":
            extra = [(rotate(q, r), r) for q in questions if not q.multi for r in range(1, len(q.options))]
            questions, rotations = questions + [q for q, _ in extra], rotations + [r for _, r in extra]
        predictions += score_questions(backend, questions, shots, rotation=rotations, **score_kwargs)
        print(f"{key}/{graded}: {rotations.count(0)} questions scored"
              + (f" ({len(questions)} prompts with every option order)" if permute == "cyclic" else ""), flush=True)
    seconds = time.perf_counter() - start
    return predictions, {"seconds": seconds, "questions_per_s": len(predictions) / max(seconds, 1e-9),
                         "missing_subjects": missing, "skipped_rows": {k: len(v) for k, v in invalid.items()},
                         "ungraded_rows": ungraded}


# ----------------------------------------------------------------------------------------------------------
# Results: metrics, files, comparisons.


def _block(rows: Sequence[Prediction], n_boot: int, seed: int) -> dict[str, Any]:
    graded = [p.correct for p in rows if p.correct is not None]
    out: dict[str, Any] = {"n": len(rows), "n_unparsed": sum(p.pred is None for p in rows)}
    if graded:
        out["accuracy"] = float(np.mean(graded))
        out["ci95"] = list(bootstrap_ci(graded, n_boot=n_boot, seed=seed))
    return out


def summarize_predictions(predictions: Sequence[Prediction], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy, n and a 95% bootstrap CI: pooled over every single-answer question (micro average), per exam
    and per subject (test split: counts only); multi-answer items and the option-order check apart."""
    base = [p for p in predictions if p.rotation == 0 and not p.multi]
    keys = list(dict.fromkeys(p.key for p in base))
    exams = list(dict.fromkeys(p.exam for p in base))
    out = {**_block(base, n_boot, seed),
           "per_exam": {e: _block([p for p in base if p.exam == e], n_boot, seed) for e in exams},
           "per_subject": {k: _block([p for p in base if p.key == k], n_boot, seed)
                           for k in sorted(keys, key=lambda k: (EXAM_NAMES.index(split_key(k)[0]), k))}}
    groups = domain_groups(keys)
    if len(groups) > 1:  # medical and general in one run: each pooled apart, never mixed into one "medical" score
        out["per_group"] = {g: _block([p for p in base if p.key in ks], n_boot, seed) for g, ks in groups.items()}
    multi = [p for p in predictions if p.multi]
    if multi:
        out["multi_answer"] = {e: _block([p for p in multi if p.exam == e], n_boot, seed)
                               for e in dict.fromkeys(p.exam for p in multi)}
    if any(p.rotation for p in predictions):
        out["option_order"] = option_order_report(predictions, n_boot, seed)
    return out


def domain_groups(keys: Sequence[str]) -> dict[str, set[str]]:
    """The cross-exam groups (medical, general) that subject keys fall in: {group: the keys in it}."""
    found = {g: set(keys) & set(expand_subjects([g])) for g in CROSS_GROUPS}
    return {g: ks for g, ks in found.items() if ks}


def option_order_report(predictions: Sequence[Prediction], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The option-order check over single-answer questions scored under every cyclic rotation: accuracy per
    rotation, their mean, consistency (the share of questions right under every rotation they were scored
    under), and position bias: how often each letter is predicted vs how often it is the gold answer."""
    rows = [p for p in predictions if not p.multi and p.correct is not None]
    by_q: dict[tuple[str, str], list[Prediction]] = {}
    for p in rows:
        by_q.setdefault((p.key, p.id), []).append(p)
    rotations = sorted({p.rotation for p in rows})
    per_rotation = {r: _block([p for p in rows if p.rotation == r], n_boot, seed) for r in rotations}
    complete = [ps for ps in by_q.values() if len(ps) > 1]
    letters = sorted({p.gold for p in rows} | {p.pred for p in rows if p.pred})
    pred_share = {c: float(np.mean([p.pred == c for p in rows])) for c in letters}
    gold_share = {c: float(np.mean([p.gold == c for p in rows])) for c in letters}
    top = max(pred_share, key=pred_share.get)
    return {
        "per_rotation": per_rotation,
        # per question, the share of its rotations answered right; then over questions (4- and 5-option alike)
        "mean_accuracy": float(np.mean([np.mean([p.correct for p in ps]) for ps in by_q.values()])),
        "consistency": float(np.mean([all(p.correct for p in ps) for ps in complete])) if complete else None,
        "n_questions": len(complete),
        "predicted_letter_share": pred_share,
        "gold_letter_share": gold_share,
        # 0: letters predicted as often as they are right; 1: always one letter though gold is spread
        "position_bias_tv": 0.5 * sum(abs(pred_share[c] - gold_share[c]) for c in letters),
        "most_predicted": top,
        "accuracy_always_most_predicted": gold_share[top],
    }


def option_order_table(report: dict[str, Any]) -> str:
    """Markdown: accuracy per rotation, mean and consistency; then predicted vs gold letter shares."""
    rows = [[f"rotation {r}", b["n"], b["accuracy"], f"[{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]"]
            for r, b in report["per_rotation"].items()]
    rows.append(["**mean over rotations** (per question, then over questions)", report["n_questions"],
                 report["mean_accuracy"], "-"])
    rows.append(["**consistency** (right under every rotation)", report["n_questions"],
                 report["consistency"] if report["consistency"] is not None else "-", "-"])
    table = markdown_table(rows, ["option order", "n", "accuracy", "95% CI"])
    letters = list(report["gold_letter_share"])
    bias = markdown_table([["predicted"] + [report["predicted_letter_share"][c] for c in letters],
                           ["gold"] + [report["gold_letter_share"][c] for c in letters]],
                          ["share of answers"] + letters)
    return (f"{table}\n\n{bias}\n\nposition bias (total variation between predicted and gold letters): "
            f"{report['position_bias_tv']:.3f}; always answering {report['most_predicted']} (the most predicted "
            f"letter) would score {report['accuracy_always_most_predicted']:.3f}")


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """predictions.jsonl: one JSON object per question (and rotation)."""
    return write_jsonl((asdict(p) for p in predictions), path)


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read predictions.jsonl back (for --compare)."""
    path = Path(path)
    rows = []
    for n, record in iter_jsonl_objects(path, error=ExamDataError):
        try:
            rows.append(Prediction(**record))
        except TypeError as err:
            raise ExamDataError(f"{path}:{n}: not a prediction line ({err})") from None
    return rows


def submission(predictions: Sequence[Prediction]) -> dict[str, dict[str, str]]:
    """C-Eval's test submission format: {subject: {id: letter}} (unparsed replies fall back to A)."""
    out: dict[str, dict[str, str]] = {}
    for p in predictions:
        if p.exam == "ceval" and p.rotation == 0:
            out.setdefault(p.subject, {})[p.id] = p.pred or "A"
    return out


def _ci(b: dict[str, Any]) -> str:
    ci = b.get("ci95")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def results_table(summary: dict[str, Any]) -> str:
    """Markdown table: one row per subject, one per exam (several subjects), a pooled row (several rows), and
    multi-answer rows; the first column names the exam."""
    ungraded = {k: sum(v.values()) for k, v in (summary.get("ungraded_rows") or {}).items()}

    def row(exam: str, name: str, b: dict[str, Any], key: str | None = None) -> list[Any]:
        cells = [get_exam(exam).title, name, b["n"], b.get("accuracy", "-"), _ci(b), b["n_unparsed"]]
        return cells + ([ungraded.get(key, 0) if key else ""] if ungraded else [])

    rows = [row(*split_key(k), b, key=k) for k, b in summary["per_subject"].items()]
    per_exam = summary.get("per_exam", {})
    for exam, b in per_exam.items():
        if len(per_exam) > 1 and sum(split_key(k)[0] == exam for k in summary["per_subject"]) > 1:
            rows.append(row(exam, "**all subjects**", b))
    for group, b in summary.get("per_group", {}).items():
        rows.append(["all", f"**pooled {group}**", *row("ceval", "", b)[2:]])
    if len(rows) > 1:
        name = "**all questions (medical + general)**" if "per_group" in summary else "**pooled**"
        several = len(per_exam) > 1 or "per_group" in summary
        only_exam = next(iter(per_exam), split_key(next(iter(summary["per_subject"])))[0])
        pooled = row(only_exam, name if several else "**overall**", summary)
        rows.append(["all" if several else pooled[0], *pooled[1:]])
    for exam, b in summary.get("multi_answer", {}).items():
        rows.append(row(exam, "multi-answer (exact set, generated; not in the rows above)", b))
    return markdown_table(rows, ["exam", "subject", "n", "accuracy", "95% CI", "unparsed"]
                          + (["skipped: no answer"] if ungraded else []))


def compare_exam_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, n_boot: int = 1000,
                      seed: int = 0) -> tuple[str, dict[str, Any]]:
    """Side-by-side accuracy of several runs on the single-answer questions they share, per exam and pooled,
    each vs the first with McNemar's exact test; with medical and general subjects present, the forgetting
    check (medical change next to general change, paired bootstrap CIs). Writes compare.md, compare.json,
    compare.png (bars with 95% CIs) and forgetting.png."""
    if len(run_dirs) < 2:
        raise UserError("--compare needs at least two run folders")
    runs = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "predictions.jsonl").is_file():
            raise FileNotFoundError(f"{d}/predictions.jsonl not found: run benchmark_ceval.py with --output_dir {d}")
        meta = json.loads((d / "metrics.json").read_text(encoding="utf-8")) if (d / "metrics.json").is_file() else {}
        label = meta.get("summary", {}).get("model_type") or d.name
        preds = {(p.exam, p.subject, p.id): p for p in read_predictions(d / "predictions.jsonl")
                 if p.correct is not None and p.rotation == 0 and not p.multi}
        runs.append((label, d, preds))
    labels = [r[0] for r in runs]
    if len(set(labels)) < len(labels):  # e.g. two LoRA runs: fall back to folder names
        runs = [(str(d), d, p) for _, d, p in runs]
    keys = sorted(set.intersection(*(set(p) for _, _, p in runs)))
    if not keys:
        raise UserError("the runs share no graded questions (different subjects or the test split?)")
    exams = sorted({k[0] for k in keys}, key=EXAM_NAMES.index)
    scopes = [(get_exam(e).title, [k for k in keys if k[0] == e]) for e in exams] if len(exams) > 1 else []
    as_key = lambda k: k[1] if k[0] == "ceval" else f"{k[0]}/{k[1]}"  # noqa: E731  (exam, subject, id) -> key
    groups = domain_groups(list(dict.fromkeys(as_key(k) for k in keys)))
    if len(groups) > 1:  # medical and general apart, as in a run's own table
        scopes += [(f"pooled {g}", [k for k in keys if as_key(k) in ks]) for g, ks in groups.items()]
    whole = "all questions (medical + general)" if len(groups) > 1 else "pooled"
    scopes.append((whole if len(exams) > 1 or len(groups) > 1 else get_exam(exams[0]).title, keys))
    rows, detail = [], []
    ref = runs[0]
    for label, d, preds in runs:
        entry: dict[str, Any] = {"run": label, "dir": str(d)}
        for scope, ks in scopes:
            correct = [preds[k].correct for k in ks]
            acc, ci = float(np.mean(correct)), bootstrap_ci(correct, n_boot=n_boot, seed=seed)
            test = mcnemar_exact(correct, [ref[2][k].correct for k in ks]) if label != ref[0] else None
            rows.append([label, scope, len(ks), acc, f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                         "-" if test is None else f"+{test['a_only']} / -{test['b_only']}",
                         "-" if test is None else f"{test['p_value']:.3g}"])
            block = {"n": len(ks), "accuracy": acc, "ci95": list(ci), "mcnemar_vs_first": test}
            entry.setdefault("per_exam", {})[scope] = block
        entry.update(entry["per_exam"][scopes[-1][0]])  # the pooled (or only) scope at the top level
        detail.append(entry)
    table = markdown_table(rows, ["run", "exam", "n", "accuracy", "95% CI", f"vs {ref[0]}: gained / lost",
                                  "McNemar p (exact)"])
    result: dict[str, Any] = {"runs": detail, "n_shared": len(keys)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    forgetting = forgetting_check(runs, keys, n_boot, seed)
    if forgetting:
        result["forgetting"] = forgetting
        table += "\n\n" + forgetting_table(forgetting)
        plot_forgetting(forgetting, out_dir / "forgetting.png")
    (out_dir / "compare.md").write_text(table + "\n", encoding="utf-8")
    (out_dir / "compare.json").write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    plot_exam_comparison(detail, out_dir / "compare.png")
    return table, result


def forgetting_check(runs, keys, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]] | None:
    """Per run after the first: the accuracy change on the shared medical questions and on the shared general
    ones, in points, each with a paired bootstrap 95% CI; None unless both groups are present."""
    groups = {g: set(expand_subjects([g])) for g in ("medical", "general")}
    members = {g: [k for k in keys if (k[1] if k[0] == "ceval" else f"{k[0]}/{k[1]}") in s] for g, s in groups.items()}
    if not all(members.values()):
        return None
    ref = runs[0][2]
    out = []
    for label, _, preds in runs[1:]:
        entry: dict[str, Any] = {"run": label, "reference": runs[0][0]}
        for g, ks in members.items():
            new, old = [preds[k].correct for k in ks], [ref[k].correct for k in ks]
            diff = float(np.mean(new) - np.mean(old))
            low, high = paired_bootstrap_diff_ci(new, old, n_boot=n_boot, seed=seed)
            went = "up" if low > 0 else "down" if high < 0 else "no clear change (the CI includes 0)"
            entry[g] = {"n": len(ks), "change": diff, "ci95": [low, high], "direction": went}
        out.append(entry)
    return out


def forgetting_table(forgetting: Sequence[dict[str, Any]]) -> str:
    """Markdown: medical change next to general change (points, 95% CI), then one summary line per run."""
    pts = lambda b: f"{100 * b['change']:+.1f} [{100 * b['ci95'][0]:+.1f}, {100 * b['ci95'][1]:+.1f}]"  # noqa: E731
    rows = [[f["run"], f["medical"]["n"], pts(f["medical"]), f["general"]["n"], pts(f["general"])] for f in forgetting]
    table = markdown_table(rows, ["run vs " + forgetting[0]["reference"], "medical n",
                                  "medical change, points [95% CI]", "general n", "general change, points [95% CI]"])
    lines = [f"{f['run']} vs {f['reference']}: medical {f['medical']['direction']} "
             f"({100 * f['medical']['change']:+.1f} points), general {f['general']['direction']} "
             f"({100 * f['general']['change']:+.1f} points)" for f in forgetting]
    return "Forgetting check (general = a fixed non-medical subject set, medqwen/exams/__init__.py):\n\n" + \
        table + "\n\n" + "\n".join(lines)


def plot_forgetting(forgetting: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Medical vs general accuracy change per run (points) with 95% paired bootstrap CIs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.4 + 1.8 * len(forgetting), 3.6))
    width = 0.38
    for i, (group, color) in enumerate((("medical", "#C44E52"), ("general", "#4C72B0"))):
        xs = [j + (i - 0.5) * width for j in range(len(forgetting))]
        change = [100 * f[group]["change"] for f in forgetting]
        err = [[c - 100 * f[group]["ci95"][0] for c, f in zip(change, forgetting)],
               [100 * f[group]["ci95"][1] - c for c, f in zip(change, forgetting)]]
        ax.bar(xs, change, width, yerr=err, capsize=5, color=color, label=f"{group} (n={forgetting[0][group]['n']})")
    ax.axhline(0, lw=1, color="gray")
    ax.set_xticks(range(len(forgetting)), [f"{f['run']} vs {f['reference']}" for f in forgetting])
    ax.set_ylabel("accuracy change, points (95% CI)")
    ax.set_title("Medical gain vs general forgetting")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def plot_exam_comparison(detail: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Bar chart of (pooled) accuracy with 95% bootstrap CI error bars."""
    plt = pyplot()
    acc = [d["accuracy"] for d in detail]
    err = [[a - d["ci95"][0] for a, d in zip(acc, detail)], [d["ci95"][1] - a for a, d in zip(acc, detail)]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(detail), 3.6))
    ax.bar([d["run"] for d in detail], acc, yerr=err, capsize=6, color="#4C72B0")
    ax.axhline(0.25, ls="--", lw=1, color="gray", label="chance (4 options)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.set_title(f"n={detail[0]['n']} shared questions")
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)
