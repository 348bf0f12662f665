"""Speed of C-Eval scoring: questions/s of three paths over the same five-shot questions, in one run.

    original  one question at a time: greedy generate, then extract the letter (how many C-Eval scripts work)
    plain     HFBackend loglik, length-sorted batches, A/B/C/D read at the last position of one forward pass
    reuse     each subject's shared five-shot head run once; its questions packed without padding into one row
              per batch, attending to the head's KV cache (medqwen.packed_attention)

    python benchmark/perf_ceval.py                 # GPU: random Qwen3-4B shape, 1,346 questions, Qwen3 tokenizer
    python benchmark/perf_ceval.py --tiny          # CPU smoke run (tiny model, bundled tokenizer, 24 questions)

The weights are random (speed does not depend on their values); the prompts are built from the team-written
medical items, lengthened to the target token lengths measured with the real tokenizer. The original path is
timed on --original_questions questions and its per-question time is extrapolated (the table says so).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medqwen.backends import HFBackend, encode_pair
from medqwen.ceval import CHOICES, GROUPS, SUBJECTS, Question, build_prompt, extract_answer, load_questions
from medqwen.config import PerfCevalConfig
from medqwen.configlib import REPO_ROOT, config_to_dict, format_config, parse_config, save_config
from medqwen.reporting import markdown_table, write_metrics


def pick_tokenizer(cfg: PerfCevalConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.tiny:
        return "model/smollm2-135m-instruct"
    candidates = ["model/qwen", "model/qwen3-tokenizer", str(REPO_ROOT.parent / "shared" / "reference" / "qwen3")]
    return next((c for c in candidates if (Path(c) / "vocab.json").is_file() or (Path(c) / "tokenizer.json").is_file()),
                candidates[-1])


def build_items(cfg: PerfCevalConfig, tokenizer) -> tuple[list[list[int]], list[int]]:
    """Token ids of five-shot prompts (official style) and each one's subject index, with the target lengths."""
    rng = np.random.default_rng(cfg.seed)
    data = Path(cfg.data_dir)
    dev = load_questions(data, "clinical_medicine", "dev") + load_questions(data, "basic_medicine", "dev")
    pool = [q for s in ("clinical_medicine", "basic_medicine") for sp in ("val", "test") for q in
            load_questions(data, s, sp)]
    subjects = (GROUPS["medical"] + list(SUBJECTS))[: cfg.subjects]  # each subject has its own shared head
    def lengthen(q: Question, shots: list[Question], target: int) -> list[int]:
        """Prepend pool stems to the question (a longer vignette) until the prompt is closest to `target`."""
        ids = tokenizer.encode(build_prompt(q, shots), add_special_tokens=False)
        while len(ids) < target:
            q.question = pool[int(rng.integers(len(pool)))].question + "。" + q.question
            longer = tokenizer.encode(build_prompt(q, shots), add_special_tokens=False)
            if len(longer) - target > target - len(ids):
                break
            ids = longer
        return ids

    heads = []  # per subject: the 5 answered items whose shared head is closest to head_tokens (real C-Eval: ~280)
    answered = dev + [q for q in pool if q.answer]
    for s in range(cfg.subjects):
        empty = Question(subjects[s], "val", "", "", ("", "", "", ""))
        draws = [[answered[i] for i in rng.choice(len(answered), 5, replace=False)] for _ in range(200)]
        lens = [len(tokenizer.encode(build_prompt(empty, d), add_special_tokens=False)) for d in draws]
        best = int(np.argmin(np.abs(np.array(lens) - cfg.head_tokens)))
        heads.append((draws[best], lens[best]))
    seqs, owner = [], []
    for k in range(cfg.questions):
        s = k % cfg.subjects
        shots, head_len = heads[s]
        mu, sigma = max(cfg.mean_tokens - head_len, 20), 0.35  # lognormal suffix lengths with mean mu
        target = head_len + int(rng.lognormal(np.log(mu) - sigma**2 / 2, sigma))
        base = pool[int(rng.integers(len(pool)))]
        seqs.append(lengthen(Question(subjects[s], "val", str(k), base.question, base.options, "A"), shots, target))
        owner.append(s)
    return seqs, owner


def time_call(fn, device) -> tuple[float, object]:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def write_profile(path: Path, device, fn) -> None:
    """Run `fn` once under torch.profiler and write its kernel table (and how busy the device was)."""
    from medqwen.perf import kernel_profiler, profile_summary

    with kernel_profiler() as profiler:
        seconds, _ = time_call(fn, device)
    path.write_text(profile_summary(profiler, seconds, what="subject"), encoding="utf-8")
    print(f"kernel table: {path}", flush=True)


def main(cfg: PerfCevalConfig) -> dict:
    import torch
    from transformers import AutoTokenizer

    from medqwen.modeling import pick_device_dtype, random_qwen3

    if cfg.tiny:
        cfg.shape, cfg.questions, cfg.original_questions, cfg.batch_size = "tiny", min(cfg.questions, 24), 4, 8
    out_dir = Path(cfg.output_dir)
    save_config(cfg, out_dir / "config.yaml")
    print(format_config(cfg), flush=True)
    tokenizer = AutoTokenizer.from_pretrained(pick_tokenizer(cfg))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    seqs, owner = build_items(cfg, tokenizer)
    n_tokens = sum(map(len, seqs))
    print(f"{len(seqs)} questions, mean {n_tokens / len(seqs):.0f} tokens, {n_tokens} in all", flush=True)

    device, dtype = pick_device_dtype(cfg.device, cfg.dtype)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with device:  # initialise on the device: a 4B model initialised on CPU takes minutes
        # qwen3-4b already has Qwen3's 151,936-row vocabulary; tiny takes the tokenizer's size
        model = random_qwen3(cfg.shape, vocab_size=len(tokenizer) if cfg.shape == "tiny" else None, seed=cfg.seed)
    model = model.to(dtype).eval()
    print(f"model: random {cfg.shape}, {next(model.parameters()).dtype}, attention "
          f"{model.config._attn_implementation}, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params")
    torch.set_default_dtype(default_dtype)
    candidates = [encode_pair(tokenizer, "答案：", c)[1][0] for c in CHOICES]

    results, answers, logprobs = [], {}, {}
    for path in cfg.paths:
        if path in ("plain", "reuse"):
            backend = HFBackend(model, tokenizer, batch_size=cfg.batch_size, reuse_prefix=path == "reuse",
                                compile=cfg.compile, kernels=cfg.kernels)
            groups = [[i for i in range(len(seqs)) if owner[i] == s] for s in range(cfg.subjects)]

            def run():
                out = np.zeros((len(seqs), 4))
                for g in groups:  # one call per subject, as run_benchmark does
                    out[g] = backend.next_token_logprobs([seqs[i] for i in g], candidates)
                return out

            # untimed warm-up (with --compile: compilation; Liger: Triton's first launches), its time reported
            warmup, _ = time_call(lambda: backend.next_token_logprobs([seqs[i] for i in groups[0][: cfg.batch_size]],
                                                                      candidates), device)
            seconds, lp = time_call(run, device)
            logprobs[path], answers[path] = lp, lp.argmax(1)
            if cfg.profile:
                write_profile(out_dir / f"profile_{path}.txt", device,
                              lambda: backend.next_token_logprobs([seqs[i] for i in groups[0]], candidates))
            n, total = len(seqs), seconds
        elif path == "original":
            if cfg.original_questions <= 0:
                continue
            sample = seqs[: cfg.original_questions]

            def run_original():
                preds = []
                for ids in sample:  # one question at a time, as the original loop does
                    gen = model.generate(torch.tensor([ids], device=device), max_new_tokens=cfg.original_max_new_tokens,
                                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
                    preds.append(extract_answer(tokenizer.decode(gen[0, len(ids):], skip_special_tokens=True)))
                return preds

            with torch.inference_mode():
                model.generate(torch.tensor([sample[0]], device=device), max_new_tokens=2, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)  # warm-up
                warmup = None
                seconds, _ = time_call(run_original, device)
            n, total = len(sample), seconds * len(seqs) / len(sample)
        else:
            raise ValueError(f"unknown path {path!r}: plain, reuse or original")
        results.append({"path": path, "kernels": backend.kernels if path != "original" else "none",
                        "compiled": cfg.compile and path != "original", "warmup_seconds": warmup,
                        "timed_questions": n, "seconds_timed": seconds,
                        "seconds_all": total, "questions_per_s": len(seqs) / total,
                        "extrapolated": n < len(seqs)})
        print(f"{path}: {seconds:.2f} s for {n} questions (kernels {results[-1]['kernels']})", flush=True)

    base = next((r["seconds_all"] for r in results if r["path"] == "original"), None)
    rows = [[r["path"], r["kernels"] + (", compiled" if r["compiled"] else ""), len(seqs),
             f"{r['seconds_all']:.2f}" + (" (extrapolated)" if r["extrapolated"] else ""),
             "-" if r["warmup_seconds"] is None else f"{r['warmup_seconds']:.1f}",
             r["questions_per_s"], n_tokens / r["seconds_all"], f"{base / r['seconds_all']:.1f}x" if base else "-"]
            for r in results]
    table = markdown_table(rows, ["path", "kernels", "questions", "seconds", "warm-up s (untimed)", "questions/s",
                                  "prompt tok/s", "vs original"])
    summary = {"questions": len(seqs), "mean_tokens": n_tokens / len(seqs), "total_tokens": n_tokens,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
               **{f"{r['path']}_seconds": r["seconds_all"] for r in results}}
    if "plain" in answers and "reuse" in answers:
        summary["reuse_same_answers"] = float(np.mean(answers["plain"] == answers["reuse"]))
        summary["reuse_max_abs_logprob_diff"] = float(np.abs(logprobs["plain"] - logprobs["reuse"]).max())
        top2 = np.sort(logprobs["plain"], axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]  # how far the plain path's answer is ahead of its runner-up
        differ = answers["plain"] != answers["reuse"]
        summary["reuse_differing_max_margin"] = float(margin[differ].max()) if differ.any() else 0.0
        table += (f"\n\nreuse vs plain: same answer on {summary['reuse_same_answers']:.2%} of questions, "
                  f"max |logprob difference| {summary['reuse_max_abs_logprob_diff']:.2e}; where they differ, the "
                  f"plain path's top two options were at most {summary['reuse_differing_max_margin']:.2e} apart")
    (out_dir / "results.md").write_text(table + "\n", encoding="utf-8")
    np.savez(out_dir / "logprobs.npz", **logprobs)  # per path: [questions, 4] log P(A..D), to compare runs
    write_metrics(out_dir, summary, detail=results, seed=cfg.seed, meta_extra={"config": config_to_dict(cfg)})
    print(f"\n{table}\n(outputs in {out_dir}/)")
    return summary


if __name__ == "__main__":
    main(parse_config(PerfCevalConfig))
