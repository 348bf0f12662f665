"""Open-ended evaluation of base vs LoRA vs GRPO on held-out conversations.

One implementation behind eval/eval_base.py, eval/eval_lora.py and eval/eval_grpo.py (they differ only in the
default --model_type). For each run it measures, on the held-out split of the conversation data:

  reference loss / perplexity   teacher-forced, assistant tokens only (nats per token, like the trainer's eval loss)
  ROUGE-L F1 and BLEU           greedy answers vs reference, Chinese at character level (sacrebleu's `zh`)
  identity rate                 share of "who are you / 你是谁" probes whose reply names the assistant
  LLM judge (optional)          relevance / correctness / safety 1-5 from any OpenAI-compatible endpoint

and writes `config.yaml`, `predictions.jsonl`, `metrics.json`, `report.md` and `report.html` to
`out/eval/<name>/`. The metrics live in medqwen/evaluate/metrics.py, the reports and `--compare` (several runs side by
side: table, report, bar chart) in medqwen/evaluate/report.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from medqwen.chat import encode_with_assistant_mask, escape_value, load_tokenizer, render
from medqwen.cli import run_script
from medqwen.client import create_chat, describe_error, openai_client, server_label
from medqwen.configlib import UserError, save_config, spread_values
from medqwen.data import IDENTITY_PROBES  # held-out phrasings: none occurs in the identity data
from medqwen.data.conversations import read_conversations, split_conversations
from medqwen.evaluate.config import EvalConfig
from medqwen.evaluate.judge import CRITERIA, EndpointUnavailableError, check_endpoint, make_judge, summarize_judgements
from medqwen.evaluate.metrics import corpus_bleu, mean_ci, names_assistant, ratio_ci, rouge_l, sentence_bleu
from medqwen.evaluate.report import compare_eval_runs, load_run, metric_rows, write_eval_report
from medqwen.exams.backends import HFBackend
from medqwen.jsonl import write_jsonl
from medqwen.modeling import load_model
from medqwen.reporting import markdown_table, write_metrics
from medqwen.runs import resolve_model

Message = dict[str, Any]


class EvalDataError(UserError):
    """Held-out data that is missing or malformed."""


# ----------------------------------------------------------------------------------------------------------
# Held-out data.


def load_heldout(cfg: EvalConfig) -> tuple[list[dict[str, Any]], str]:
    """The conversations to evaluate (records as the trainer reads them) and a sentence saying where they came from.

    A trainer run saves its split in <output_dir>/split/eval.jsonl; without one, --data_path is split here by
    the trainer's own function (same seed, same ratio: the same held-out conversations).
    """
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
# Model side: reference loss, greedy generation (HF or an OpenAI-compatible endpoint).


def reference_loss(model, tokenizer, conversations: list[list[Message]], max_seq_len: int, batch_size: int,
                   enable_thinking: bool | None = None, tools: list[list[dict] | None] | None = None
                   ) -> list[tuple[float, int]]:
    """(summed NLL in nats, assistant token count) per conversation, teacher-forced on assistant tokens only."""
    import torch
    from tqdm.auto import tqdm

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
    texts = [render(tokenizer, p, tools=t, add_generation_prompt=True, enable_thinking=enable_thinking)
             for p, t in zip(prompts, tools or [None] * len(prompts))]
    backend = HFBackend(model, tokenizer, batch_size=batch_size, progress=True)
    # A reply cut at max_new_tokens can end inside a multi-byte character, which decodes to U+FFFD.
    return [reply.strip().rstrip("\ufffd") for reply in backend.generate(texts, max_new_tokens=max_new_tokens)]


def generate_openai(base_url: str, model: str, prompts: list[list[Message]], max_new_tokens: int,
                    api_key: str | None = None, timeout_s: float = 120.0, concurrency: int = 8,
                    desc: str = "generate", tools: list[list[dict] | None] | None = None) -> list[str]:
    """Greedy replies from an OpenAI-compatible server (vLLM batches the concurrent requests)."""
    from tqdm.auto import tqdm

    client = openai_client(base_url, api_key, timeout_s=timeout_s, max_retries=2)
    check_endpoint(client, base_url, what="generation", key_hint="--api_key / $OPENAI_API_KEY", secrets=[api_key])

    def one(messages: list[Message], tool_list: list[dict] | None) -> str:
        extra = {"tools": escape_value(tool_list)} if tool_list else {}
        try:
            reply = create_chat(client, model=model, messages=messages, temperature=0.0, max_tokens=max_new_tokens,
                                **extra)
            return (reply.choices[0].message.content or "").strip()
        except Exception as err:  # noqa: BLE001 -- the message (redacted) says what failed, never the key
            kind, detail = describe_error(err, [api_key])
            raise EndpointUnavailableError(f"generation endpoint {server_label(base_url)} failed ({kind}): "
                                           f"{detail}") from None

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(tqdm(pool.map(one, prompts, tools or [None] * len(prompts)), total=len(prompts), desc=desc,
                         unit="answer"))


# ----------------------------------------------------------------------------------------------------------
# One evaluation run.


def output_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.output_dir or f"out/eval/{run_name(cfg)}")


def run_name(cfg: EvalConfig) -> str:
    """--name, else the model type (an adapter without one: lora)."""
    return cfg.name or cfg.model_type or ("lora" if cfg.adapter else "base")


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate one model (base or base + adapter); write every output file; return metrics.json's content."""
    cfg = dataclasses.replace(cfg, name=run_name(cfg))
    out = output_dir(cfg)
    if cfg.backend == "hf":  # fails before the data is read and the judge is asked
        choice = resolve_model(cfg.model, cfg.adapter, cfg.model_type)
        base_model, adapter, model_label = choice.model, choice.adapter, choice.label
    else:  # the server holds the model (and any adapter)
        base_model, adapter, model_label = None, None, f"{cfg.served_model} at {cfg.base_url}"
    judge = None
    if cfg.judge_base_url:  # fail fast: a judge that is down should not cost the generation time
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
        probes = [{"id": example_id([{"role": "user", "content": q}]), "kind": "identity", "question": q,
                   "prompt": [{"role": "user", "content": q}], "reference": None} for q in IDENTITY_PROBES]

    timings: dict[str, float] = {}
    losses: list[tuple[float, int]] | None = None
    if cfg.backend == "hf":
        tokenizer = load_tokenizer(base_model, cfg.chat_template)
        model = load_model(base_model, adapter=adapter, device=cfg.device, dtype=cfg.dtype)
        t0 = time.perf_counter()
        losses = reference_loss(model, tokenizer, [e["conversation"] for e in examples], cfg.max_seq_len,
                                cfg.batch_size, cfg.enable_thinking, tools=[e["tools"] for e in examples])
        timings["loss_s"] = time.perf_counter() - t0
        generate = lambda prompts, tools, desc: generate_hf(  # noqa: E731
            model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, cfg.enable_thinking, tools)
    else:  # chat endpoints return no logits for a given reply, so no reference loss here
        generate = lambda prompts, tools, desc: generate_openai(  # noqa: E731
            cfg.base_url, cfg.served_model, prompts, cfg.max_new_tokens, cfg.api_key, cfg.timeout_s,
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

    summary = summarize_answers(examples, probes, losses, judgements, cfg.seed)
    write_jsonl(({k: v for k, v in row.items() if k != "conversation"} for row in examples + probes),
                out / "predictions.jsonl")
    meta = {"model": model_label, "base_model": base_model, "backend": cfg.backend, "data_source": source,
            "max_new_tokens": cfg.max_new_tokens, "assistant_name": cfg.assistant_name,
            "judge_model": cfg.judge_model if judge else None, "timings_s": timings}
    write_metrics(out, summary, detail={"per_example": "predictions.jsonl"}, meta_extra=meta, seed=cfg.seed)
    run = load_run(out)
    write_eval_report(out, [run], cfg.report_samples, cfg.seed)
    print(markdown_table(metric_rows([run]), ["metric", run["name"]]))
    print(f"\nwrote {out}/ (predictions.jsonl, metrics.json, config.yaml, report.md, report.html)", file=sys.stderr)
    return run["metrics"]


def summarize_answers(examples: list[dict], probes: list[dict], losses: list[tuple[float, int]] | None,
                      judgements: list[dict] | None, seed: int) -> dict[str, Any]:
    """Headline numbers with 95% bootstrap intervals over questions."""
    summary: dict[str, Any] = {"n": len(examples)}
    if losses is not None:
        nll, tokens = sum(loss for loss, _ in losses), sum(t for _, t in losses)
        summary["ref_loss"] = nll / tokens if tokens else None  # per assistant token, as the trainer reports
        summary["ref_ppl"] = math.exp(summary["ref_loss"]) if tokens else None
        summary["ref_tokens"] = tokens
        summary["ref_loss_ci95"] = ratio_ci([loss for loss, _ in losses], [t for _, t in losses], seed=seed)
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
        summary.update(summarize_judgements(judgements))
        for name in CRITERIA:
            summary[f"judge_{name}_ci95"] = mean_ci([j[name] for j in judgements if "error" not in j], seed)
    return summary


def cli(model_type: str = "base") -> None:
    """What eval/eval_{base,lora,grpo}.py run: EvalConfig from env/YAML/flags, the script's model type unless
    --model_type (or YAML) sets one, then main."""

    def own_model_type(cfg: EvalConfig) -> EvalConfig:
        if cfg.model_type is not None:
            return cfg
        # an adapter given to eval_base.py means a LoRA run
        return dataclasses.replace(cfg, model_type="lora" if cfg.adapter and model_type == "base" else model_type)

    run_script(EvalConfig, main, argv=spread_values(sys.argv[1:]), prepare=own_model_type)


def main(cfg: EvalConfig) -> None:
    """Entry point shared by the three eval scripts: a run, or --compare of finished runs."""
    if cfg.compare:
        out = Path(cfg.output_dir or "out/eval/compare")
        print(compare_eval_runs(cfg.compare, out, cfg.report_samples, cfg.seed))
        print(f"\nwrote {out}/ (report.md, report.html, compare.png)", file=sys.stderr)
        return
    run_eval(cfg)
