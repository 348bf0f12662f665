"""benchmark/perf_grpo.py: the GRPO step timer's split and the CPU smoke run of the script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_decode_limit_arithmetic():
    """Bytes per decoded token: every weight once (tied head counted once) plus the KV cache of the batch."""
    from medqwen.modeling import random_qwen3
    from medqwen.perf import decode_bytes_per_step, forward_flops, lora_train_flops

    config = random_qwen3("tiny", vocab_size=256).config
    weights = sum(p.numel() for name, p in random_qwen3("tiny", vocab_size=256).named_parameters()
                  if "norm" not in name)
    kv = 2 * config.num_key_value_heads * config.head_dim * config.num_hidden_layers
    assert decode_bytes_per_step(config, batch=4, context=10) == 2 * (weights + kv * 40)
    # a log-prob pass is the forward third of a LoRA train step's frozen work
    assert forward_flops(config, [64]) < lora_train_flops(config, [64], 8, ["q_proj"]) < 3 * forward_flops(config, [64])


@pytest.mark.slow
def test_perf_grpo_tiny_smoke(tmp_path, bundled_model_dir):
    """Both rollout engines run TRL's GRPO step on the tiny model; the parts add up to the step."""
    out = tmp_path / "perf"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(REPO / "benchmark/perf_grpo.py"), "--tiny", "--output_dir", str(out),
           "--variants", "plain,compiled", "--warmup_steps", "0", "--steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    for name in ("plain", "compiled"):
        r = results[name]
        assert r["rollouts"] == name and r["completions_per_step"] == 8 and r["prompts_per_step"] == 2
        assert 0 < r["mean_completion_tokens"] <= 8
        assert min(r["rollout_s"], r["logprob_s"], r["policy_s"]) > 0
        step = r["steps"][0]
        assert step["rollout_s"] + step["logprob_s"] + step["score_s"] + step["policy_s"] == pytest.approx(step["seconds"])
        assert r["decode_limit_tok_s"] is None and r["peak_rss_gib"] > 0  # CPU: no bandwidth, no GPU memory
    table = (out / "results.md").read_text()
    assert "| plain |" in table and "| compiled |" in table and "never stop early" in table
    assert set(json.loads((out / "metrics.json").read_text())["summary"]) == {"plain", "compiled"}
