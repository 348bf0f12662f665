"""The Markdown table, results.json and metrics.json of a perf_train run."""

from __future__ import annotations

import json
from pathlib import Path

from medqwen.reporting import markdown_table, write_metrics


def same_step(row: dict, original: dict | None) -> str:
    """"yes" when every optimizer step of `row` trained on the conversations of the original's step, else
    "DIFFERENT (k of n steps)"; "n/a" without an original row to compare with."""
    mine, theirs = row.get("step_fingerprints"), (original or {}).get("step_fingerprints")
    if not mine or not theirs:
        return "n/a"
    differ = sum(a != b for a, b in zip(mine, theirs)) + abs(len(mine) - len(theirs))
    return "yes" if not differ else f"DIFFERENT ({differ} of {max(len(mine), len(theirs))} steps)"


def loss_path(row: dict, original: dict | None) -> str:
    """The step loss, first -> last optimizer step. The first is the untrained model's loss on the first step's
    conversations: a variant that computes the original's function on the original's step gets the same value
    (within bf16 rounding, relative 1e-3); "DIFFERENT" where it does not."""
    losses = row.get("step_losses")
    if not losses:
        return ""
    text = f"{losses[0]:.4f} → {losses[-1]:.4f}"
    theirs = (original or {}).get("step_losses")
    if theirs and same_step(row, original) == "yes" and abs(losses[0] - theirs[0]) > 1e-3 * abs(theirs[0]):
        text += " DIFFERENT"
    return text


def write_perf_report(results: list[dict], peak: float | None, out: Path, seed: int = 0, baseline: str = "original"
                      ) -> str:
    """The Markdown table of perf_train results (returned, and written to results.md), results.json, metrics.json.
    Rows are compared with the single-process row of variant `baseline` (the table calls it the original).

    A row launched on several processes reports their sum (real tok/s), the mean per process, MFU against
    `processes` GPUs, the largest peak memory of any process, and its scaling over the same variant on one.
    """
    def single(variant):
        return next((r for r in results if r["variant"] == variant and r["launcher"] == "single"
                     and "real_tok_s" in r), None)

    base = single(baseline)
    table = []
    for r in results:
        processes = r["processes"]
        launch = r["launcher"] + (f" x{processes}" if r["launcher"] != "single" else "")
        if r.get("memory_cap_gib"):
            launch += f", {r['memory_cap_gib']:g} GiB cap"
        if r["launcher"] == "fsdp" and "weights_sharded" in r and not r["weights_sharded"]:
            launch += f" (unsharded: ran as {r['distributed_type']})"
        if "real_tok_s" not in r:
            table.append([r["variant"], launch, r.get("error") or r.get("skipped")] + [""] * 12)
            continue
        mem = r["peak_allocated_gib"] if r["peak_allocated_gib"] is not None else r["peak_rss_gib"]
        median = round(r["median_step_tok_s"]) if r.get("median_step_tok_s") else ""
        one = single(r["variant"]) if processes > 1 else None
        table.append([r["variant"], launch, round(r["real_tok_s"]), round(r["real_tok_s"] / processes), median,
                      round(r["computed_tok_s"]), f"{100 * r['padding_fraction']:.0f}%",
                      f"{100 * r['tflops'] / (peak * processes):.1f}%" if peak else "n/a",
                      f"{mem:.1f}" + (f" ({r['peak_reserved_gib']:.1f})" if r["peak_reserved_gib"] else ""),
                      f"{r['conversations_per_step']:.0f}",
                      round(r["tokens_per_step"]) if r.get("tokens_per_step") else "",
                      same_step(r, base), loss_path(r, base),
                      f"{r['real_tok_s'] / base['real_tok_s']:.2f}x" if base else "n/a",
                      f"{r['real_tok_s'] / one['real_tok_s']:.2f}x" if one else ""])
    headers = ["variant", "launch", "real tok/s", "per process", "median step real tok/s", "computed tok/s",
               "padding", "MFU", "peak GiB alloc (reserved)", "conversations/step", "real tokens/step",
               "steps = original's", "step loss, first → last", "vs original",
               "vs 1 process"]
    md = markdown_table(table, headers)
    note = (f"\nMFU against a measured bf16 matmul peak of {peak:.0f} TFLOP/s per GPU; FLOPs per "
            "medqwen.perf.lora_train_flops. Several processes: tok/s summed over them, peak memory of the fullest."
            if peak else "\nMFU: no GPU, no peak.")
    note += ("\n*steps = original's*: whether every optimizer step (warm-up included) trained on the same "
             "conversations as the original recipe's; DIFFERENT means another recipe (more or fewer conversations "
             "per step), not a speed-up. *step loss*: the first step's is the untrained model's, equal (relative "
             "1e-3) for every variant that computes the original's function on its steps (else DIFFERENT); later "
             "steps part by dropout draws and rounding.")
    (out / "results.md").write_text(md + note + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"peak_tflops": peak, "results": results}, indent=2), encoding="utf-8")
    summary = {f"{r['variant']} on {r['launcher']}":
               {k: r.get(k) for k in ("real_tok_s", "processes", "peak_allocated_gib", "error", "skipped")}
               for r in results}
    write_metrics(out, summary, detail=results, seed=seed, meta_extra={"peak_tflops": peak})
    return md + note
