"""Reports of open-ended evaluations: one run's report.md/report.html, or several runs side by side (Markdown
table with paired differences and McNemar tests, report pages with sampled answers, a bar chart)."""

from __future__ import annotations

import html
import json
import random
from pathlib import Path
from typing import Any, Sequence

from medqwen.configlib import load_saved_config
from medqwen.evaluate.metrics import mean_ci
from medqwen.jsonl import iter_jsonl_objects
from medqwen.reporting import markdown_table, pyplot, save_figure
from medqwen.stats import mcnemar_exact


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


def write_eval_report(out_dir: str | Path, runs: list[dict[str, Any]], samples: int = 20, seed: int = 42) -> None:
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


def compare_eval_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, samples: int = 20, seed: int = 42) -> str:
    """Side-by-side table, report.md/html and a bar chart for finished runs; returns the Markdown table."""
    runs = [load_run(d) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # two runs called "base" from different folders: use folder paths
        for run in runs:
            run["name"] = run["dir"]
    write_eval_report(out_dir, runs, samples, seed)
    plot_eval_comparison(runs, Path(out_dir) / "compare.png")
    return markdown_table(metric_rows(runs), ["metric"] + [r["name"] for r in runs])


def plot_eval_comparison(runs: list[dict[str, Any]], path: Path) -> None:
    """One panel per headline metric (reference loss, ROUGE-L, identity rate): a bar per run, 95% intervals."""
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
