"""benchmark/perf_generate.py: the CPU smoke run of the generation benchmark."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_perf_generate_tiny_smoke(tmp_path, bundled_model_dir):
    """generate and the engine (base and merged adapter) answer the same prompts alike; every row is timed."""
    out = tmp_path / "perf"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(REPO / "benchmark/perf_generate.py"), "--tiny", "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"hf base", "engine base, 2 rows", "engine base, 4 rows",
                         "engine base, 4 rows, whole-cache reads", "hf lora", "GRPO-shaped rollouts, adapter unmerged",
                         "engine lora, 4 rows"}
    for r in rows.values():
        assert r["tok_s"] > 0 and r["mean_new_tokens"] == 8 and r["decode_limit_tok_s"] is None  # CPU: no limit
    # fp32 on CPU: the engine's greedy answers are generate's, with and without the (merged) adapter
    for name in ("engine base, 4 rows", "engine lora, 4 rows"):
        assert rows[name]["same_as_hf"] == rows[name]["same_first_token"] == rows[name]["same_prefix_share"] == 1.0
    assert rows["engine lora, 4 rows"]["adapter"] == "adapter merged into the weights"
    assert "eager steps (no CUDA)" in rows["engine base, 2 rows"]["path"]
    assert len(report["totals"]) == 2 and "adapter merge included" in report["totals"][1]
    table = (out / "results.md").read_text()
    assert "| hf lora |" in table and "extrapolated" in table
    assert set(json.loads((out / "metrics.json").read_text())["summary"]) == set(rows)
