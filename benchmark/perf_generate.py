"""Generation speed: transformers' generate against the decode engine on the evaluation's workload.

A randomly initialised model of a real shape (speed and memory do not depend on weight values) answers prompts
rendered from the shipped conversations (everything before the last assistant reply, our chat template, the real
tokenizer), greedy, --max_new_tokens each, as open-ended evaluation does. One process times, on one model:
transformers' generate in the evaluation's batches (base, then with a random LoRA adapter, unmerged, as PEFT
loads it); the decode engine (medqwen.kernels.decode.DecodeEngine: prompts sorted and batched, each decode step one CUDA
graph) at several batch sizes, base and with the adapter merged; and GRPO-shaped sampled rollouts (the adapter
unmerged, as training keeps it). Each row reports tok/s, ms per decode step, the decode limit (every weight and
the KV cache at the mean context read once per step, at the copy bandwidth measured in the same process) and the
share of it reached, and peak memory; how far the engine's greedy answers follow generate's (whole answers,
first tokens, the share before the first difference);
and the base + LoRA evaluation time of --heldout conversations extrapolated from the measured rates. Random
weights never sample the end-of-turn token on purpose, so every answer runs to --max_new_tokens: the slowest case.

    # Qwen3-4B shape, tokenizer in model/qwen (or --tokenizer DIR)
    python benchmark/perf_generate.py
    # CPU smoke run (CI): tiny model, 8 new tokens
    python benchmark/perf_generate.py --tiny --output_dir out/perf-generate-tiny

Writes results.json, results.md, config.yaml and metrics.json to --output_dir and prints the table.
"""

import copy
import itertools
import json
import statistics
import time
from pathlib import Path

from medqwen.cli import run_script
from medqwen.configlib import REPO_ROOT, save_config
from medqwen.perf.config import PerfGenerateConfig
from medqwen.reporting import markdown_table, write_metrics
from medqwen.train.config import LORA_TARGETS

TINY = {"shape": "tiny", "max_new_tokens": 8, "rows": [2, 4], "engine_batches": 1, "hf_batch_size": 2,
        "rollout_rows": 4, "rollout_tokens": 8, "heldout": 100, "compiled": False}


def eval_prompts(tokenizer, files: list[str]) -> list[str]:
    """The rendered prompt of every conversation that ends in an assistant reply (as evaluation.to_examples)."""
    from medqwen.chat import render

    texts = []
    for name in files:
        for line in (REPO_ROOT / name).read_text(encoding="utf-8").splitlines():
            messages = json.loads(line)["conversations"] if line.strip() else []
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last:
                texts.append(render(tokenizer, messages[:last], add_generation_prompt=True))
    return texts


class Clock:
    """Wall seconds of a block, the GPU drained at both ends; peak memory of the block."""

    def __init__(self, torch):
        self.torch, self.cuda = torch, torch.cuda.is_available()

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *_):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak_gib = self.torch.cuda.max_memory_allocated() / 2**30
        else:
            self.peak_gib = None
        self.seconds = time.perf_counter() - self.t0


def limit_tok_s(config, rows: int, context: float, bandwidth: float | None) -> float | None:
    """Tokens/s if each decode step only read every weight and the KV cache of `rows` rows at `context` tokens."""
    from medqwen.perf.flops import decode_bytes_per_step

    if not bandwidth:
        return None
    return rows / (decode_bytes_per_step(config, rows, round(context)) / (bandwidth * 1e9))


def row(name: str, path: str, rows: int, prompts: list[list[int]], completions: list[list[int]], clock: Clock,
        steps: int, config, bandwidth: float | None, **extra) -> dict:
    tokens = sum(map(len, completions))
    mean_prompt = statistics.mean(map(len, prompts))
    mean_new = tokens / len(completions)
    limit = limit_tok_s(config, rows, mean_prompt + mean_new / 2, bandwidth)
    return {"name": name, "path": path, "rows": rows, "prompts": len(prompts), "mean_prompt_tokens": mean_prompt,
            "mean_new_tokens": mean_new, "seconds": clock.seconds, "tok_s": tokens / clock.seconds,
            "ms_per_step": 1000 * clock.seconds / steps, "decode_limit_tok_s": limit,
            "limit_share": tokens / clock.seconds / limit if limit else None, "peak_gib": clock.peak_gib, **extra}


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    """How far the engine's greedy answers follow generate's: whole answers identical, first tokens identical, and
    the mean share of each answer before the first differing token (random bf16 weights have near-ties everywhere,
    so the whole-answer share alone says little there)."""
    def common(a: list[int], b: list[int]) -> int:
        return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    pairs = list(zip(ours, theirs))
    return {"same_as_hf": sum(a == b for a, b in pairs) / len(pairs),
            "same_first_token": sum(a[:1] == b[:1] for a, b in pairs) / len(pairs),
            "same_prefix_share": statistics.mean(common(a, b) / max(len(b), 1) for a, b in pairs)}


def time_hf(model, prompts, config, batch_size: int, torch) -> tuple[list[list[int]], Clock]:
    """transformers' generate as HFBackend calls it: left-padded batches, longest prompts first (after one untimed
    short call)."""
    outputs: list[list[int]] = [[] for _ in prompts]
    stop = set(config.eos_token_id)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    device = next(model.parameters()).device
    short = copy.deepcopy(config)
    short.max_new_tokens = 2
    with torch.inference_mode():  # untimed: the first call's lazy set-up (cuBLAS handles, kernel choice)
        first = torch.tensor([prompts[order[0]]], device=device)
        model.generate(input_ids=first, attention_mask=torch.ones_like(first), generation_config=short)
    with Clock(torch) as clock, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            pad = config.pad_token_id
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
            mask = (torch.arange(width, device=device)[None] >= torch.tensor(
                [width - len(prompts[i]) for i in batch], device=device)[:, None]).long()
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
            for r, i in enumerate(batch):
                end = next((k for k, t in enumerate(out[r]) if t in stop), None)
                outputs[i] = out[r] if end is None else out[r][:end + 1]
    return outputs, clock


def time_engine(engine, prompts, config, rows: int, torch) -> tuple[list[list[int]], Clock, int]:
    """One untimed call on the longest `rows` prompts (records the graphs), then all prompts timed."""
    longest = sorted(prompts, key=len, reverse=True)[:rows]
    engine.generate(longest, config)
    with Clock(torch) as clock:
        outputs = engine.generate(prompts, config)
    steps = sum(max(len(outputs[i]) for i in batch) for batch in engine.batches(list(map(len, prompts)),
                                                                                config.max_new_tokens))
    return outputs, clock, steps


def main(cfg: PerfGenerateConfig) -> list[dict]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GenerationConfig

    from medqwen.chat import load_tokenizer
    from medqwen.kernels.decode import DecodeEngine, GraphSampler, merge_lora_for_decoding
    from medqwen.perf.data import benchmark_model, benchmark_tokenizer_dir
    from medqwen.perf.flops import memory_bandwidth_gbs

    if cfg.tiny:
        for key, value in TINY.items():
            setattr(cfg, key, value)
    out = Path(cfg.output_dir)
    save_config(cfg, out / "config.yaml")
    tokenizer = load_tokenizer(benchmark_tokenizer_dir(cfg.tokenizer, cfg.shape))
    texts = eval_prompts(tokenizer, cfg.data)
    encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    bandwidth = memory_bandwidth_gbs()  # before the model: scratch buffers
    model = benchmark_model(cfg.shape, tokenizer, cfg.seed).eval()
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")] + \
        ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    greedy = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=cfg.max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id or 0, eos_token_id=sorted(set(stop)))
    cycle = lambda n: list(itertools.islice(itertools.cycle(encoded), n))  # noqa: E731
    hf_prompts = cycle(cfg.hf_batch_size * cfg.hf_batches)
    results, answers = [], {}

    def report(r: dict) -> None:
        results.append(r)
        print(f"{r['name']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in r.items() if k != "name"), flush=True)
        write_generate_report(results, cfg, bandwidth, out)  # after every row: a killed run keeps its rows

    def engine_row(name: str, rows: int, **engine_kwargs) -> dict:
        engine = DecodeEngine(model, max_batch_tokens=rows * (max(map(len, encoded)) + cfg.max_new_tokens),
                              max_rows=rows, **engine_kwargs)
        prompts = hf_prompts + cycle(rows * cfg.engine_batches)[len(hf_prompts):]
        outputs, clock, steps = time_engine(engine, prompts, greedy, rows, torch)
        answers[name] = outputs[:len(hf_prompts)]
        engine.sampler._state = None  # free the KV cache and graphs before the next size
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        return row(name, f"engine: {engine.describe()}", rows, prompts, outputs, clock, steps, model.config,
                   bandwidth, adapter=engine.adapter)

    if hf_prompts:
        hf_out, clock = time_hf(model, hf_prompts, greedy, cfg.hf_batch_size, torch)
        answers["hf base"] = hf_out
        report(row("hf base", "transformers generate", cfg.hf_batch_size, hf_prompts, hf_out, clock,
                   cfg.hf_batches * cfg.max_new_tokens, model.config, bandwidth))
    for rows in cfg.rows:
        report(engine_row(f"engine base, {rows} rows", rows))
    engine_rows = [r for r in results if r["name"].startswith("engine base")]
    best = max(engine_rows, key=lambda r: r["tok_s"])["rows"]
    if cfg.no_window:
        report(engine_row(f"engine base, {best} rows, whole-cache reads", best, window_slots=None))
    if cfg.compiled:
        report(engine_row(f"engine base, {best} rows, compiled step", best, compile_step=True))

    # a random adapter (B non-zero: a fresh one adds nothing), unmerged as PEFT loads it
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.05,
                                             target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    if hf_prompts:
        hf_out, clock = time_hf(model.eval(), hf_prompts, greedy, cfg.hf_batch_size, torch)
        answers["hf lora"] = hf_out
        report(row("hf lora", "transformers generate, PEFT adapter", cfg.hf_batch_size, hf_prompts, hf_out, clock,
                   cfg.hf_batches * cfg.max_new_tokens, model.config, bandwidth))
    if cfg.rollout_rows:
        sampled = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_beams=1,
                                   max_new_tokens=cfg.rollout_tokens, pad_token_id=greedy.pad_token_id,
                                   eos_token_id=greedy.eos_token_id)
        sampler = GraphSampler(model.train(), compile_step=cfg.rollout_compile)  # TRL samples in train mode
        prompts = cycle(cfg.rollout_rows)
        width = max(map(len, prompts))
        ids = torch.tensor([[greedy.pad_token_id] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = (ids != greedy.pad_token_id).long()
        sampler.generate(ids, mask, sampled)  # compiles (if asked) and records
        with Clock(torch) as clock:
            for _ in range(2):
                got = sampler.generate(ids, mask, sampled)
        completions = [r for r in got[:, width:].tolist()] * 2
        report(row("GRPO-shaped rollouts, adapter unmerged", "GraphSampler"
                   + (", compiled step" if cfg.rollout_compile else ""), cfg.rollout_rows, prompts * 2,
                   completions, clock, 2 * got.shape[1] - 2 * width, model.config, bandwidth))
        sampler._state = None
        model.eval()
    with Clock(torch) as merge:
        merge_lora_for_decoding(model)
    report(engine_row(f"engine lora, {best} rows", best) | {"merge_s": merge.seconds})
    for r in results:  # greedy answers to the same prompts, token for token
        theirs = answers.get("hf lora" if r["name"].startswith("engine lora") else "hf base")
        if r["name"].startswith("engine") and theirs is not None:
            r |= agreement(answers[r["name"]], theirs)
    write_generate_report(results, cfg, bandwidth, out)
    print((out / "results.md").read_text(encoding="utf-8"))
    return results


def totals(results: list[dict], cfg: PerfGenerateConfig) -> list[str]:
    """Base + LoRA evaluation of --heldout conversations, extrapolated from each path's measured tok/s."""
    lines = []
    tokens = cfg.heldout * cfg.max_new_tokens
    by = {r["name"]: r for r in results}
    hf = [by.get("hf base"), by.get("hf lora")]
    if all(hf):
        lines.append(f"transformers generate: {(tokens / hf[0]['tok_s'] + tokens / hf[1]['tok_s']) / 60:.1f} min")
    lora = next((r for r in results if r["name"].startswith("engine lora")), None)
    base = next((r for r in results if r["name"] == f"engine base, {lora['rows']} rows"), None) if lora else None
    if lora and base:
        minutes = (tokens / base["tok_s"] + tokens / lora["tok_s"] + lora.get("merge_s", 0)) / 60
        lines.append(f"decode engine, {lora['rows']} rows: {minutes:.1f} min (adapter merge included)")
    return lines


def write_generate_report(results: list[dict], cfg: PerfGenerateConfig, bandwidth: float | None, out: Path) -> None:
    hf = {r["name"]: r for r in results if r["name"].startswith("hf ")}
    table = []
    for r in results:
        baseline = hf.get("hf lora" if "lora" in r["name"] else "hf base")
        limit = r["decode_limit_tok_s"]
        table.append([r["name"], r["rows"], f"{r['prompts']} x {r['mean_new_tokens']:.0f}", f"{r['tok_s']:,.0f}",
                      f"{r['ms_per_step']:.2f}", f"{limit:,.0f} ({100 * r['limit_share']:.0f}%)" if limit else "n/a",
                      f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a",
                      f"{r['tok_s'] / baseline['tok_s']:.1f}x" if baseline and "GRPO" not in r["name"] else "",
                      f"{100 * r['same_as_hf']:.0f}% / {100 * r['same_first_token']:.0f}% / "
                      f"{100 * r['same_prefix_share']:.0f}%" if "same_as_hf" in r else ""])
    headers = ["path", "rows", "prompts x new tokens", "tok/s", "ms per decode step", "decode limit tok/s (reached)",
               "peak GiB", "vs generate", "= generate's: answers / first tokens / prefix"]
    note = (f"\n\nMean prompt {statistics.mean(r['mean_prompt_tokens'] for r in results):.0f} tokens. *decode limit*: "
            "rows / (bytes of every weight and of the KV cache at the mean context) x the copy bandwidth measured "
            f"here ({bandwidth:.0f} GB/s)." if bandwidth else "\n\nNo GPU: no bandwidth, no decode limit.")
    lines = totals(results, cfg)
    md = markdown_table(table, headers) + note + (
        f"\n\nBase + LoRA evaluation of {cfg.heldout} conversations x {cfg.max_new_tokens} tokens, extrapolated: "
        + "; ".join(lines) + "." if lines else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"bandwidth_gbs": bandwidth, "results": results, "totals": lines},
                                                 indent=2), encoding="utf-8")
    kept = ("tok_s", "limit_share", "peak_gib", "same_as_hf", "same_first_token", "same_prefix_share")
    write_metrics(out, {r["name"]: {k: r.get(k) for k in kept}
                        for r in results}, detail=results, seed=cfg.seed, meta_extra={"bandwidth_gbs": bandwidth})


if __name__ == "__main__":
    run_script(PerfGenerateConfig, main)
