"""Open-ended evaluation of base vs LoRA vs GRPO on held-out conversations.

One implementation behind eval/eval_base.py, eval/eval_lora.py and eval/eval_grpo.py (they differ only in
defaults). For each run it measures, on the held-out split of the conversation data:

  reference loss / perplexity   teacher-forced, assistant tokens only (nats per token, like the trainer's eval loss)
  ROUGE-L F1 and BLEU           greedy answers vs reference, Chinese at character level (sacrebleu's `zh`)
  identity rate                 share of "who are you / 你是谁" probes whose reply names the assistant
  LLM judge (optional)          relevance / correctness / safety 1-5 from any OpenAI-compatible endpoint

and writes `config.yaml`, `predictions.jsonl`, `metrics.json`, `report.md` and `report.html` to
`out/eval/<name>/`. `compare_runs` puts several runs side by side (table, report, bar chart).
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import random
import sys
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from medqwen.config import EvalConfig, format_config, load_saved_config, save_config
from medqwen.jsonl import iter_jsonl_objects, write_jsonl
from medqwen.reporting import markdown_table, write_metrics

Message = dict[str, Any]


class EvalDataError(ValueError):
    """Held-out data that is missing or malformed."""


# ----------------------------------------------------------------------------------------------------------
# Config: three scripts, one dataclass, different defaults.


def with_defaults(cls: type, **defaults: Any) -> type:
    """A subclass of a config dataclass whose listed fields get new defaults (help text kept)."""
    resolved = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    fields = []
    for name, value in defaults.items():
        if name not in by_name:
            raise KeyError(f"{cls.__name__} has no field {name!r}")
        fields.append((name, resolved[name], dataclasses.field(default=value, metadata=by_name[name].metadata)))
    sub = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
    sub.__doc__ = cls.__doc__  # --help shows the stage's description, not the generated signature
    return sub


# ----------------------------------------------------------------------------------------------------------
# Held-out data.


def load_heldout(cfg: EvalConfig) -> tuple[list[dict[str, Any]], str]:
    """The conversations to evaluate (records as the trainer reads them) and a sentence saying where they came from.

    A trainer run saves its split in <output_dir>/split/eval.jsonl; without one, --data_path is split here by
    the trainer's own function (same seed, same ratio: the same held-out conversations).
    """
    from medqwen.training import read_conversations, split_conversations

    saved = Path(cfg.split_run) / "split" / "eval.jsonl" if cfg.split_run else None
    if saved is not None and saved.is_file() and cfg.eval_split == "validation":
        return read_conversations(saved), f"validation split saved by the trainer run {cfg.split_run}"
    if not Path(cfg.data_path).is_file():
        where = f"{saved} does not exist and " if saved is not None else ""
        raise EvalDataError(f"no held-out data: {where}--data_path {cfg.data_path} does not exist. Train first "
                            "(its run saves split/eval.jsonl), prepare data with data/prepare_data.py, or pass "
                            "--data_path / --split_run.")
    conversations = read_conversations(cfg.data_path)
    if cfg.eval_split == "all":
        return conversations, f"all of {cfg.data_path}"
    _, heldout = split_conversations(conversations, cfg.eval_ratio, cfg.seed)
    note = f"; {saved} not found" if saved is not None else ""
    return heldout, f"seeded split of {cfg.data_path} (eval_ratio {cfg.eval_ratio}, seed {cfg.seed}{note})"


def example_id(messages: Sequence[Message]) -> str:
    """A stable id from the prompt's content, so runs line up by question in comparisons."""
    text = json.dumps([[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def to_examples(conversations: list[list[Message] | dict[str, Any]]) -> list[dict[str, Any]]:
    """One example per conversation: prompt = everything before the last assistant reply, reference = that reply.

    A conversation is a message list or a record `{"conversations": [...], "tools": [...]}` (tools optional).
    """
    examples = []
    for record in conversations:
        messages, tools = (record["conversations"], record.get("tools")) if isinstance(record, dict) else (record, None)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or not isinstance(messages[last].get("content"), str) or messages[last].get("tool_calls"):
            continue  # nothing to compare a generated text answer against
        prompt = messages[:last]
        question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        examples.append({"id": example_id(prompt), "kind": "heldout", "prompt": prompt, "tools": tools or None,
                         "question": question, "reference": messages[last]["content"],
                         "conversation": messages[:last + 1]})
    return examples


# ----------------------------------------------------------------------------------------------------------
# Text metrics: Chinese at character level, other scripts as sacrebleu's 13a words.


def zh_tokens(text: str) -> list[str]:
    """sacrebleu's `zh` tokenization: every CJK character is a token; Latin words and digits stay words."""
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

    return TokenizerZh()(text.strip()).split()


class _ZhTokenizer:
    """rouge-score's default tokenizer deletes every non-ASCII character, i.e. all Chinese; this keeps them."""

    def tokenize(self, text: str) -> list[str]:
        return zh_tokens(text)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (0-1) on zh tokens."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_ZhTokenizer())
    return scorer.score(reference, prediction)["rougeL"].fmeasure


def sentence_bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (0-100, sacrebleu defaults: exp smoothing) on zh tokens."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference], tokenize="zh").score


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) on zh tokens: n-gram counts pooled over all answers, the usual headline number."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize="zh").score


def names_assistant(reply: str, name: str) -> bool:
    """True when the reply contains the assistant's name (case and spaces ignored)."""
    squash = lambda s: "".join(s.split()).lower()  # noqa: E731
    return bool(name) and squash(name) in squash(reply)


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float], n_boot: int = 1000,
             seed: int = 0) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of sum(num)/sum(den) over items (e.g. loss per token over answers)."""
    import numpy as np

    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if num.size < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, num.size, size=(n_boot, num.size))
    ratios = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def mean_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of a mean over items (None for fewer than 2 items)."""
    from medqwen.stats import bootstrap_ci  # written for 0/1 outcomes; the mean of any values works the same

    return bootstrap_ci(values, seed=seed) if len(values) >= 2 else None


# ----------------------------------------------------------------------------------------------------------
# Model side: base model resolution, reference loss, greedy generation (HF or an OpenAI-compatible endpoint).


def resolve_base_model(cfg: EvalConfig) -> str:
    """The base model: --model_name_or_path, else the adapter run's saved config.yaml (`model_name_or_path`)."""
    from medqwen.modeling import ModelNotFoundError

    if cfg.adapter and not (Path(cfg.adapter) / "adapter_config.json").is_file():
        what = "does not exist" if not Path(cfg.adapter).exists() else "holds no adapter_config.json"
        trainer = "trainer/train_grpo.py" if cfg.name == "grpo" else "trainer/train_lora.py"
        raise ModelNotFoundError(f"adapter folder {cfg.adapter} {what}. Train it first (python {trainer} "
                                 f"--output_dir {cfg.adapter}) or pass --adapter PATH.")
    if cfg.model_name_or_path:
        return cfg.model_name_or_path
    if not cfg.adapter:
        raise ValueError("set --model_name_or_path (the base model) or --adapter (a trainer run)")
    saved = Path(cfg.adapter) / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{saved} not found: cannot tell which base model {cfg.adapter} was trained on; "
                                "pass --model_name_or_path")
    base = load_saved_config(saved).get("model_name_or_path")
    if not base:
        raise ValueError(f"{saved} has no model_name_or_path; pass --model_name_or_path")
    return str(base)


def reference_loss(model, tokenizer, conversations: list[list[Message]], max_seq_len: int, batch_size: int,
                   enable_thinking: bool | None = None, tools: list[list[dict] | None] | None = None
                   ) -> list[tuple[float, int]]:
    """(summed NLL in nats, assistant token count) per conversation, teacher-forced on assistant tokens only."""
    import torch
    from tqdm.auto import tqdm

    from medqwen.chat import encode_with_assistant_mask

    encoded = []
    for messages, tool_list in zip(conversations, tools or [None] * len(conversations)):
        ids, mask = encode_with_assistant_mask(tokenizer, messages, tools=tool_list, enable_thinking=enable_thinking)
        encoded.append((ids[:max_seq_len], mask[:max_seq_len]))  # truncated like training does
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths share a batch
    pad = tokenizer.pad_token_id
    for start in tqdm(range(0, len(order), batch_size), desc="reference loss", unit="batch"):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            seq, mask = encoded[i]
            ids[row, :len(seq)] = torch.tensor(seq)
            attn[row, :len(seq)] = 1
            labels[row, :len(seq)] = torch.tensor([t if m else -100 for t, m in zip(seq, mask)])
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device)).logits
        for row, i in enumerate(batch):  # one row at a time: the fp32 upcast of a full batch of logits is large
            target = labels[row, 1:].to(model.device)
            nll = torch.nn.functional.cross_entropy(logits[row, :-1].float(), target, ignore_index=-100,
                                                    reduction="sum")
            results[i] = (float(nll), int((target != -100).sum()))
    return results


def generate_hf(model, tokenizer, prompts: list[list[Message]], max_new_tokens: int, batch_size: int,
                enable_thinking: bool | None = None, tools: list[list[dict] | None] | None = None) -> list[str]:
    """Greedy replies: prompts rendered with our chat template, then the benchmark's batched HF generation."""
    from medqwen.backends import HFBackend
    from medqwen.chat import render

    texts = [render(tokenizer, p, tools=t, add_generation_prompt=True, enable_thinking=enable_thinking)
             for p, t in zip(prompts, tools or [None] * len(prompts))]
    backend = HFBackend(model, tokenizer, batch_size=batch_size, progress=True)
    # A reply cut at max_new_tokens can end inside a multi-byte character, which decodes to U+FFFD.
    return [reply.strip().rstrip("\ufffd") for reply in backend.generate(texts, max_new_tokens=max_new_tokens)]


def generate_openai(base_url: str, model: str, prompts: list[list[Message]], max_new_tokens: int,
                    api_key: str | None = None, timeout_s: float = 120.0, concurrency: int = 8,
                    desc: str = "generate", tools: list[list[dict] | None] | None = None) -> list[str]:
    """Greedy replies from an OpenAI-compatible server (vLLM batches the concurrent requests)."""
    from openai import OpenAI
    from tqdm.auto import tqdm

    from medqwen.judge import check_endpoint

    client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=2)
    check_endpoint(client, base_url, what="generation", key_hint="--api_key / $OPENAI_API_KEY")

    def one(messages: list[Message], tool_list: list[dict] | None) -> str:
        extra = {"tools": tool_list} if tool_list else {}
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0.0,
                                               max_tokens=max_new_tokens, **extra)
        return (reply.choices[0].message.content or "").strip()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(tqdm(pool.map(one, prompts, tools or [None] * len(prompts)), total=len(prompts), desc=desc,
                         unit="answer"))


# ----------------------------------------------------------------------------------------------------------
# One evaluation run.


def output_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.output_dir or f"out/eval/{cfg.name}")


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate one model (base or base + adapter); write every output file; return metrics.json's content."""
    out = output_dir(cfg)
    if cfg.backend == "hf":
        from medqwen.modeling import check_model_dir

        base_model = resolve_base_model(cfg)
        check_model_dir(base_model)  # before the data is read and the judge is asked
        model_label = base_model + (f" + {cfg.adapter}" if cfg.adapter else "")
    else:  # the server holds the model (and any adapter)
        base_model, model_label = None, f"{cfg.served_model} at {cfg.base_url}"
    judge = None
    if cfg.judge_base_url:  # fail fast: a judge that is down should not cost the generation time
        from medqwen.judge import make_judge

        judge = make_judge(cfg.judge_base_url, cfg.judge_model, cfg.judge_rubric, cfg.judge_api_key,
                           cfg.judge_timeout_s, cfg.judge_max_retries)
        judge.check_reachable()
    conversations, source = load_heldout(cfg)
    examples = to_examples(conversations)[: cfg.limit]
    if not examples:
        raise EvalDataError(f"no conversation ending in an assistant reply in the {source}")
    save_config(cfg, out / "config.yaml", extra={"resolved_base_model": base_model, "data_source": source})
    print(f"evaluating {model_label} on {len(examples)} held-out conversations ({source})", file=sys.stderr)

    probes = []
    if cfg.identity_probes:
        from medqwen.data import IDENTITY_PROBES  # held-out phrasings: none occurs in the identity data

        probes = [{"id": example_id([{"role": "user", "content": q}]), "kind": "identity", "question": q,
                   "prompt": [{"role": "user", "content": q}], "reference": None} for q in IDENTITY_PROBES]

    timings: dict[str, float] = {}
    losses: list[tuple[float, int]] | None = None
    if cfg.backend == "hf":
        from medqwen.chat import load_tokenizer
        from medqwen.modeling import load_model

        tokenizer = load_tokenizer(base_model, cfg.chat_template)
        model = load_model(base_model, adapter=cfg.adapter, device=cfg.device, dtype=cfg.dtype)
        t0 = time.perf_counter()
        losses = reference_loss(model, tokenizer, [e["conversation"] for e in examples], cfg.max_seq_len,
                                cfg.batch_size, cfg.enable_thinking, tools=[e["tools"] for e in examples])
        timings["loss_s"] = time.perf_counter() - t0
        generate = lambda prompts, tools, desc: generate_hf(  # noqa: E731
            model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, cfg.enable_thinking, tools)
    else:  # chat endpoints return no logits for a given reply, so no reference loss here
        generate = lambda prompts, tools, desc: generate_openai(  # noqa: E731
            cfg.base_url, cfg.served_model, prompts, cfg.max_new_tokens, cfg.api_key, cfg.request_timeout_s,
            desc=desc, tools=tools)

    t0 = time.perf_counter()
    answers = generate([e["prompt"] for e in examples], [e["tools"] for e in examples], "answers")
    timings["generate_s"] = time.perf_counter() - t0
    probe_replies = generate([p["prompt"] for p in probes], None, "identity probes") if probes else []

    for i, (example, answer) in enumerate(zip(examples, answers)):
        example.update(prediction=answer, rouge_l=rouge_l(answer, example["reference"]),
                       bleu=sentence_bleu(answer, example["reference"]))
        if losses is not None:
            example.update(ref_nll=losses[i][0], ref_tokens=losses[i][1])
    for probe, reply in zip(probes, probe_replies):
        probe.update(prediction=reply, names_assistant=names_assistant(reply, cfg.assistant_name))

    judgements = None
    if judge is not None:
        from tqdm.auto import tqdm

        judgements = [judge.grade(e["question"], e["reference"], e["prediction"])
                      for e in tqdm(examples, desc="judge", unit="answer")]
        for example, verdict in zip(examples, judgements):
            example["judge"] = verdict

    summary = summarize(examples, probes, losses, judgements, cfg.seed)
    write_jsonl(({k: v for k, v in row.items() if k != "conversation"} for row in examples + probes),
                out / "predictions.jsonl")
    meta = {"model": model_label, "base_model": base_model, "backend": cfg.backend, "data_source": source,
            "max_new_tokens": cfg.max_new_tokens, "assistant_name": cfg.assistant_name,
            "judge_model": cfg.judge_model if judge else None, "timings_s": timings}
    write_metrics(out, summary, detail={"per_example": "predictions.jsonl"}, meta_extra=meta, seed=cfg.seed)
    run = load_run(out)
    write_report(out, [run], cfg.report_samples, cfg.seed)
    print(markdown_table(metric_rows([run]), ["metric", run["name"]]))
    print(f"\nwrote {out}/ (predictions.jsonl, metrics.json, config.yaml, report.md, report.html)", file=sys.stderr)
    return run["metrics"]


def summarize(examples: list[dict], probes: list[dict], losses: list[tuple[float, int]] | None,
              judgements: list[dict] | None, seed: int) -> dict[str, Any]:
    """Headline numbers with 95% bootstrap intervals over questions."""
    summary: dict[str, Any] = {"n": len(examples)}
    if losses is not None:
        nll, tokens = sum(l for l, _ in losses), sum(t for _, t in losses)
        summary["ref_loss"] = nll / tokens if tokens else None  # per assistant token, as the trainer reports
        summary["ref_ppl"] = math.exp(summary["ref_loss"]) if tokens else None
        summary["ref_tokens"] = tokens
        summary["ref_loss_ci95"] = ratio_ci([l for l, _ in losses], [t for _, t in losses], seed=seed)
    summary["rouge_l"] = sum(e["rouge_l"] for e in examples) / len(examples)
    summary["rouge_l_ci95"] = mean_ci([e["rouge_l"] for e in examples], seed)
    summary["bleu"] = corpus_bleu([e["prediction"] for e in examples], [e["reference"] for e in examples])
    summary["sentence_bleu"] = sum(e["bleu"] for e in examples) / len(examples)
    summary["sentence_bleu_ci95"] = mean_ci([e["bleu"] for e in examples], seed)
    if probes:
        hits = [float(p["names_assistant"]) for p in probes]
        summary["identity_rate"] = sum(hits) / len(hits)
        summary["identity_rate_ci95"] = mean_ci(hits, seed)
        summary["identity_n"] = len(hits)
    if judgements is not None:
        from medqwen.judge import CRITERIA, summarize_judgements

        summary.update(summarize_judgements(judgements))
        for name in CRITERIA:
            summary[f"judge_{name}_ci95"] = mean_ci([j[name] for j in judgements if "error" not in j], seed)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Reports: one run or several side by side.


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's metrics, config and predictions."""
    run_dir = Path(run_dir)
    for name in ("metrics.json", "predictions.jsonl"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found: is {run_dir} an eval output folder?")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    config = load_saved_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    rows = [row for _, row in iter_jsonl_objects(run_dir / "predictions.jsonl")]
    return {"name": config.get("name") or run_dir.name, "dir": str(run_dir), "metrics": metrics["summary"],
            "meta": metrics.get("meta", {}), "predictions": rows}


HEADLINE = [("n", "held-out answers"), ("ref_loss", "reference loss (nats/token)"), ("ref_ppl", "perplexity"),
            ("rouge_l", "ROUGE-L F1 (char)"), ("bleu", "BLEU (char, corpus)"), ("identity_rate", "identity rate"),
            ("judge_relevance", "judge relevance (1-5)"), ("judge_correctness", "judge correctness (1-5)"),
            ("judge_safety", "judge safety (1-5)"), ("judge_failed", "judge failures")]


def _with_ci(metrics: dict[str, Any], key: str) -> Any:
    value, ci = metrics.get(key), metrics.get(f"{key}_ci95")
    if isinstance(value, float) and ci:
        return f"{value:.4g} [{ci[0]:.3g}, {ci[1]:.3g}]"
    return "-" if value is None else value


def metric_rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows of (metric, value per run) for the metrics at least one run has, then the paired comparisons."""
    return [[label] + [_with_ci(r["metrics"], key) for r in runs] for key, label in HEADLINE
            if any(r["metrics"].get(key) is not None for r in runs)] + paired_rows(runs)


PAIRED = [("rouge_l", "ROUGE-L", lambda p: p.get("rouge_l")), ("bleu", "sentence BLEU", lambda p: p.get("bleu")),
          ("loss", "loss/token", lambda p: p["ref_nll"] / p["ref_tokens"] if p.get("ref_tokens") else None)]


def paired_rows(runs: list[dict[str, Any]], seed: int = 0) -> list[list[Any]]:
    """Every later run minus the first on the questions both answered: mean difference with a paired 95%
    bootstrap interval; identity probes with McNemar's exact test (only probes the two runs disagree on count)."""
    from medqwen.stats import mcnemar_exact

    if len(runs) < 2:
        return []
    first = {p["id"]: p for p in runs[0]["predictions"]}
    rows = []
    for _, label, value in PAIRED:
        row = [f"Δ {label} vs {runs[0]['name']}", "-"]
        for run in runs[1:]:
            diffs = [value(p) - value(first[p["id"]]) for p in run["predictions"] if p.get("kind") == "heldout"
                     and p["id"] in first and value(p) is not None and value(first[p["id"]]) is not None]
            ci = mean_ci(diffs, seed)
            row.append(f"{sum(diffs) / len(diffs):+.4g}" + (f" [{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else "")
                       + f" (n={len(diffs)})" if diffs else "-")
        if any(cell != "-" for cell in row[2:]):
            rows.append(row)
    row = [f"identity vs {runs[0]['name']}: McNemar p", "-"]
    for run in runs[1:]:
        pairs = [(first[p["id"]]["names_assistant"], p["names_assistant"]) for p in run["predictions"]
                 if p.get("kind") == "identity" and p["id"] in first]
        test = mcnemar_exact([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
        row.append(f"{test['p_value']:.3g} ({test['a_only']} only {runs[0]['name']}, {test['b_only']} only "
                   f"{run['name']})" if test else "-")
    if any(cell != "-" for cell in row[2:]):
        rows.append(row)
    return rows


def sample_ids(runs: list[dict[str, Any]], k: int, seed: int) -> list[str]:
    """Up to k held-out ids every run answered (seeded), then every identity probe all runs asked."""
    def ids(run, kind):
        return [p["id"] for p in run["predictions"] if p.get("kind") == kind]

    common = [i for i in ids(runs[0], "heldout") if all(i in set(ids(r, "heldout")) for r in runs[1:])]
    picked = random.Random(seed).sample(common, min(k, len(common)))
    probes = [i for i in ids(runs[0], "identity") if all(i in set(ids(r, "identity")) for r in runs[1:])]
    return [i for i in common if i in set(picked)] + probes


CI_NOTE = ("Values in brackets: 95% bootstrap interval over questions (paired for the Δ rows: each run minus the "
           "first, on the questions both answered).")


def write_report(out_dir: str | Path, runs: list[dict[str, Any]], samples: int = 20, seed: int = 42) -> None:
    """report.md and report.html: the metric table, then sampled questions with every run's answer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [r["name"] for r in runs]
    by_id = [{p["id"]: p for p in r["predictions"]} for r in runs]
    chosen = sample_ids(runs, samples, seed)

    md = [f"# Evaluation: {' vs '.join(names)}", "", markdown_table(metric_rows(runs), ["metric"] + names), "",
          CI_NOTE, "", "## Sampled answers", ""]
    for n, item_id in enumerate(chosen, 1):
        first = by_id[0][item_id]
        md += [f"### {n}. {first['kind']} `{item_id}`", "", f"**Question:** {first['question']}", ""]
        if first.get("reference") is not None:
            md += [f"**Reference:** {first['reference']}", ""]
        for name, table in zip(names, by_id):
            md += [f"**{name}** ({_item_scores(table[item_id])}): {table[item_id]['prediction']}", ""]
    (out_dir / "report.md").write_text("\n".join(md), encoding="utf-8")

    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in ["metric"] + names)
    cell = lambda c: f"{c:.4g}" if isinstance(c, float) else str(c)  # noqa: E731  (as markdown_table prints)
    body = "".join("<tr>" + "".join(f"<td>{e(cell(c))}</td>" for c in row) + "</tr>" for row in metric_rows(runs))
    cards = []
    for item_id in chosen:
        first = by_id[0][item_id]
        cells = "".join(f"<td><div class=s>{e(_item_scores(t[item_id]))}</div>{e(t[item_id]['prediction'])}</td>"
                        for t in by_id)
        ref = e(first.get("reference") or "")
        cards.append(f"<tr><td><div class=s>{e(first['kind'])} {item_id}</div>{e(first['question'])}</td>"
                     f"<td>{ref}</td>{cells}</tr>")
    answer_head = "".join(f"<th>{e(n)}</th>" for n in names)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Evaluation: {e(' vs '.join(names))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:.4em;vertical-align:top;white-space:pre-wrap;max-width:40em}}
.s{{color:#777;font-size:.8em}}</style></head><body>
<h1>Evaluation: {e(' vs '.join(names))}</h1>
<table><tr>{head}</tr>{body}</table><p>{e(CI_NOTE)}</p>
<h2>Sampled answers</h2>
<table><tr><th>question</th><th>reference</th>{answer_head}</tr>{''.join(cards)}</table></body></html>
"""
    (out_dir / "report.html").write_text(page, encoding="utf-8")


def _item_scores(row: dict[str, Any]) -> str:
    if row.get("kind") == "identity":
        return "names the assistant" if row.get("names_assistant") else "does not name the assistant"
    parts = [f"ROUGE-L {row['rouge_l']:.3f}", f"BLEU {row['bleu']:.1f}"]
    judge = row.get("judge") or {}
    if "error" in judge:
        parts.append(f"judge failed: {judge['error']}")
    elif judge:
        parts.append("judge " + "/".join(str(judge[c]) for c in ("relevance", "correctness", "safety")))
    return ", ".join(parts)


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, samples: int = 20, seed: int = 42) -> str:
    """Side-by-side table, report.md/html and a bar chart for finished runs; returns the Markdown table."""
    runs = [load_run(d) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # two runs called "base" from different folders: use folder paths
        for run in runs:
            run["name"] = run["dir"]
    write_report(out_dir, runs, samples, seed)
    plot_comparison(runs, Path(out_dir) / "compare.png")
    return markdown_table(metric_rows(runs), ["metric"] + [r["name"] for r in runs])


def plot_comparison(runs: list[dict[str, Any]], path: Path) -> None:
    """One panel per headline metric (reference loss, ROUGE-L, identity rate): a bar per run, 95% intervals."""
    from medqwen.reporting import pyplot, save_figure

    plt = pyplot()

    keys = [k for k in ("ref_loss", "rouge_l", "identity_rate") if any(r["metrics"].get(k) is not None for r in runs)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r["metrics"].get(key) or 0.0 for r in runs]
        cis = [r["metrics"].get(f"{key}_ci95") for r in runs]
        err = [[v - c[0] if c else 0 for v, c in zip(values, cis)], [c[1] - v if c else 0 for v, c in zip(values, cis)]]
        ax.bar([r["name"] for r in runs], values, yerr=err, capsize=4, color="#4c72b0")
        ax.set_title(dict(HEADLINE)[key])
        if key != "ref_loss":
            ax.set_ylim(0, 1)
    save_figure(fig, path, dpi=120)


def spread_values(argv: Sequence[str], flag: str = "--compare") -> list[str]:
    """`--compare a b c` -> `--compare a --compare b --compare c` (the config parser takes one value per flag)."""
    out, taking = [], False
    for arg in argv:
        if arg in (flag, flag.replace("_", "-")):
            taking = True
            continue
        if taking and not arg.startswith("-"):
            out += [flag, arg]
            continue
        taking = False
        out.append(arg)
    return out


def cli(**defaults: Any) -> None:
    """What eval/eval_*.py run: EvalConfig with the script's defaults, resolved from env/YAML/flags, then main."""
    from medqwen.config import parse_config

    main(parse_config(with_defaults(EvalConfig, **defaults), argv=spread_values(sys.argv[1:])))


def main(cfg: EvalConfig) -> None:
    """Entry point shared by the three eval scripts: a run, or --compare of finished runs."""
    from medqwen.judge import EndpointUnavailableError

    print("config:\n" + format_config(cfg), file=sys.stderr)
    try:
        if cfg.compare:
            out = Path(cfg.output_dir or "out/eval/compare")
            print(compare_runs(cfg.compare, out, cfg.report_samples, cfg.seed))
            print(f"\nwrote {out}/ (report.md, report.html, compare.png)", file=sys.stderr)
            return
        run_eval(cfg)
    except (FileNotFoundError, EndpointUnavailableError, ValueError) as err:  # bad input: data, model, endpoint
        sys.exit(f"error: {err}")  # the messages name the file/line/URL and say what to do
