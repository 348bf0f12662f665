"""benchmark/perf_grpo.py: the GRPO step timer's split and the CPU smoke run of the script."""

import json
import os
import subprocess
import sys
import time
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


class ScriptedGrpoTrainer:
    """TRL's GRPO step in outline (the methods GrpoStepTimer wraps, called as TRL calls them), each part sleeping
    a known time: rollouts, the no-gradient log-prob pass, the rest of scoring, the policy's pass with gradients."""

    SECONDS = {"rollout_s": 0.3, "logprob_s": 0.15, "score_s": 0.1, "policy_s": 0.4}

    def __init__(self):
        from types import SimpleNamespace

        self.args, self.callbacks = SimpleNamespace(max_steps=0), []

    def add_callback(self, callback):
        self.callbacks.append(callback)

    def _generate_single_turn(self, prompt_ids):
        time.sleep(self.SECONDS["rollout_s"])
        return [[7, 7, 7]] * len(prompt_ids), None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, *args):
        import torch

        # the policy's own pass (with gradients) is half of its training time
        time.sleep(self.SECONDS["policy_s"] / 2 if torch.is_grad_enabled() else self.SECONDS["logprob_s"])

    def _generate_and_score_completions(self):
        import torch

        self._generate_single_turn([[1] * 4, [1] * 4])
        with torch.no_grad():
            self._get_per_token_logps_and_entropies(None, None, torch.ones(2, 5))
        time.sleep(self.SECONDS["score_s"])

    def train(self):
        import torch

        for callback in self.callbacks:
            callback.on_train_begin(self.args, None, None)
        for _ in range(self.args.max_steps):
            self._generate_and_score_completions()
            self._get_per_token_logps_and_entropies(None, None, torch.ones(2, 5))
            time.sleep(self.SECONDS["policy_s"] / 2)  # backward and the optimizer step
            for callback in self.callbacks:
                callback.on_step_end(self.args, None, None)


def test_step_timer_splits_a_step_of_known_parts():
    """Each part is the time its own code took (scoring without the rollouts and log-probs it calls, log-probs
    without the policy's pass), and the parts add up to the step."""
    from medqwen.perf.grpo import GrpoStepTimer

    rows = GrpoStepTimer(ScriptedGrpoTrainer()).run(warmup_steps=1, steps=1)
    assert len(rows) == 1
    row = rows[0]
    for part, seconds in ScriptedGrpoTrainer.SECONDS.items():
        assert row[part] == pytest.approx(seconds, abs=0.05), (part, row)
    assert row["seconds"] == pytest.approx(sum(ScriptedGrpoTrainer.SECONDS.values()), abs=0.1)
    assert (row["prompt_lengths"], row["completion_lengths"], row["logprob_lengths"], row["rollout_batch"]) == \
        ([4, 4], [3, 3], [5, 5], 2)


@pytest.mark.slow
def test_perf_grpo_tiny_smoke(tmp_path, bundled_model_dir):
    """Both rollout engines run TRL's GRPO step on the tiny model and report every part of it (the split itself
    is checked against known durations in test_step_timer_splits_a_step_of_known_parts)."""
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
        assert (step["rollout_s"] + step["logprob_s"] + step["score_s"] + step["policy_s"]
                == pytest.approx(step["seconds"]))
        assert r["decode_limit_tok_s"] is None and r["peak_rss_gib"] > 0  # CPU: no bandwidth, no GPU memory
    table = (out / "results.md").read_text()
    assert "| plain |" in table and "| compiled |" in table and "never stop early" in table
    assert set(json.loads((out / "metrics.json").read_text())["summary"]) == {"plain", "compiled"}
