"""Speed of C-Eval scoring: questions/s of three paths over the same five-shot questions, in one run.

    original  one question at a time: greedy generate, then extract the letter (how many C-Eval scripts work)
    plain     HFBackend loglik, length-sorted batches, A/B/C/D read at the last position of one forward pass
    reuse     each subject's shared five-shot head run once; its questions packed without padding into one row
              per batch, attending to the head's KV cache (medqwen.kernels.packed_attention)

    python benchmark/perf_ceval.py                 # GPU: random Qwen3-4B shape, 1,346 questions, Qwen3 tokenizer
    python benchmark/perf_ceval.py --tiny          # CPU smoke run (tiny model, bundled tokenizer, 24 questions)
    python benchmark/perf_ceval.py --pooled --questions 8000 --paths reuse --permute_options cyclic
        # the pooled medical set (C-Eval + CMMLU + CMExam prompts), plain order and every cyclic option order

The weights are random (speed does not depend on their values); the prompts are built from the team-written
medical items, lengthened to the target token lengths measured with the real tokenizer. The original path is
timed on --original_questions questions and its per-question time is extrapolated (the table says so).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medqwen.cli import run_script
from medqwen.configlib import REPO_ROOT, config_to_dict, save_config
from medqwen.exams import expand_subjects, get_exam, split_key
from medqwen.exams.backends import HFBackend, encode_pair
from medqwen.exams.base import LETTERS
from medqwen.exams.ceval import GROUPS, SUBJECTS, load_questions
from medqwen.exams.runner import Question, build_prompt, extract_answer, rotate
from medqwen.perf.config import PerfCevalConfig
from medqwen.perf.data import benchmark_tokenizer_dir
from medqwen.reporting import markdown_table, write_metrics


def pick_tokenizer(cfg: PerfCevalConfig) -> str:
    return str(benchmark_tokenizer_dir(cfg.tokenizer, "tiny" if cfg.tiny else cfg.shape))


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


# Approximate sizes of the scored medical splits (C-Eval val, CMMLU test, CMExam test): the pooled set's mix.
POOLED_SHARES = {"ceval": 110, "cmmlu": 1800, "cmexam": 6800}
SAMPLE_DIRS = {"ceval": "data/benchmark/ceval-exam", "cmmlu": "data/benchmark/cmmlu", "cmexam": "data/benchmark/cmexam"}


def build_pooled_items(cfg: PerfCevalConfig, tokenizer) -> dict[str, tuple[list[list[int]], list[int]]]:
    """Token ids of five-shot prompts over the medical subjects of all three exams, each exam's own prompt on the
    shipped team-written items of that exam (a subject without items borrows its exam's; only the instruction
    names the subject), questions split in POOLED_SHARES proportions. {"plain order": (seqs, subject index)}, and
    with --permute_options cyclic also "cyclic option order": every question under each rotation of its options."""
    keys = expand_subjects(["medical"])
    pools, shot_pools = {}, {}
    for exam_name, folder in SAMPLE_DIRS.items():
        exam = get_exam(exam_name)
        qs, shots = [], []
        for subject in exam.subjects:
            try:
                qs += [q for q in exam.load(REPO_ROOT / folder, subject, exam.graded_split("val")) if not q.multi]
                shots += [q for q in exam.load(REPO_ROOT / folder, subject, exam.shot_split) if not q.multi]
            except ValueError:  # no sample for this subject
                continue
        pools[exam_name], shot_pools[exam_name] = qs, shots[:5]
    total = sum(POOLED_SHARES.values())
    sets: dict[str, tuple[list[list[int]], list[int]]] = {"plain order": ([], [])}
    if cfg.permute_options == "cyclic":
        sets["cyclic option order"] = ([], [])
    cache: dict[tuple, list[int]] = {}
    for exam_name, share in POOLED_SHARES.items():
        subjects = [k for k in keys if split_key(k)[0] == exam_name]
        n_exam = round(cfg.questions * share / total)
        for k in range(n_exam):
            key = subjects[k % len(subjects)]
            base = pools[exam_name][(k // len(subjects)) % len(pools[exam_name])]
            q = Question(split_key(key)[1], "test", base.id, base.question, base.options, base.answer, exam=exam_name)
            shots = [Question(q.subject, "dev", s.id, s.question, s.options, s.answer, exam=exam_name)
                     for s in shot_pools[exam_name]]
            owner = keys.index(key)
            for label, rotations in (("plain order", [0]), ("cyclic option order", range(len(q.options)))):
                if label not in sets:
                    continue
                for r in rotations:
                    ck = (key, base.id, r)
                    if ck not in cache:
                        cache[ck] = tokenizer.encode(build_prompt(rotate(q, r), shots), add_special_tokens=False)
                    sets[label][0].append(cache[ck])
                    sets[label][1].append(owner)
    return sets


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
    tokenizer = AutoTokenizer.from_pretrained(pick_tokenizer(cfg))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    if cfg.pooled:
        sets = build_pooled_items(cfg, tokenizer)
    else:
        sets = {"plain order": build_items(cfg, tokenizer)}
    for label, (seqs, _) in sets.items():
        n_tokens = sum(map(len, seqs))
        print(f"{label}: {len(seqs)} questions, mean {n_tokens / len(seqs):.0f} tokens, {n_tokens} in all", flush=True)
    seqs, owner = sets["plain order"]
    n_tokens = sum(map(len, seqs))

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
    n_letters = 5 if cfg.pooled else 4  # CMExam has five options; reading one more logit costs nothing
    candidates = [encode_pair(tokenizer, "答案：", c)[1][0] for c in LETTERS[:n_letters]]

    results, answers, logprobs = [], {}, {}
    for path in cfg.paths:
        if path in ("plain", "reuse"):
            backend = HFBackend(model, tokenizer, batch_size=cfg.batch_size, reuse_prefix=path == "reuse",
                                compile=cfg.compile, kernels=cfg.kernels)
            groups = [g for g in ([i for i in range(len(seqs)) if owner[i] == s] for s in sorted(set(owner))) if g]

            def run():
                out = np.zeros((len(seqs), len(candidates)))
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
    if "cyclic option order" in sets and "reuse" in cfg.paths:
        rot_seqs, rot_owner = sets["cyclic option order"]
        backend = HFBackend(model, tokenizer, batch_size=cfg.batch_size, reuse_prefix=True, compile=cfg.compile,
                            kernels=cfg.kernels)
        rot_groups = [g for g in ([i for i in range(len(rot_seqs)) if rot_owner[i] == s]
                                  for s in sorted(set(rot_owner))) if g]

        def run_rotations():
            for g in rot_groups:
                backend.next_token_logprobs([rot_seqs[i] for i in g], candidates)

        seconds, _ = time_call(run_rotations, device)
        results.append({"path": "reuse, every cyclic option order", "kernels": backend.kernels,
                        "compiled": cfg.compile, "warmup_seconds": None, "timed_questions": len(rot_seqs),
                        "seconds_timed": seconds, "seconds_all": seconds, "questions_per_s": len(seqs) / seconds,
                        "prompts": len(rot_seqs), "tokens": sum(map(len, rot_seqs)), "extrapolated": False})
        print(f"option-order check: {seconds:.2f} s for {len(rot_seqs)} prompts ({len(seqs)} questions)", flush=True)

    base = next((r["seconds_all"] for r in results if r["path"] == "original"), None)
    rows = [[r["path"], r["kernels"] + (", compiled" if r["compiled"] else ""), len(seqs),
             f"{r['seconds_all']:.2f}" + (" (extrapolated)" if r["extrapolated"] else ""),
             "-" if r["warmup_seconds"] is None else f"{r['warmup_seconds']:.1f}",
             r["questions_per_s"], r.get("tokens", n_tokens) / r["seconds_all"],
             f"{base / r['seconds_all']:.1f}x" if base else "-"]
            for r in results]
    table = markdown_table(rows, ["path", "kernels", "questions", "seconds", "warm-up s (untimed)", "questions/s",
                                  "prompt tok/s", "vs original"])
    summary = {"questions": len(seqs), "mean_tokens": n_tokens / len(seqs), "total_tokens": n_tokens,
               "pooled": cfg.pooled, "subjects": len(set(owner)),
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
               **{f"{r['path'] if r.get('prompts') is None else 'option_order'}_seconds": r["seconds_all"]
                  for r in results}}
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
    run_script(PerfCevalConfig, main)
