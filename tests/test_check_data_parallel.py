"""benchmark/check_data_parallel.py: two processes train like one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


def test_compare_measures_loss_and_update_differences():
    sys.path.insert(0, str(REPO / "benchmark"))
    from check_data_parallel import compare

    initial = {"a": torch.zeros(4)}
    single = {"losses": [2.0, 1.0], "initial": initial, "final": {"a": torch.tensor([1.0, 0, 0, 0])}}
    parallel = {"losses": [2.0, 1.1], "initial": initial, "final": {"a": torch.tensor([1.0, 0.1, 0, 0])},
                "distributed_type": "MULTI_GPU", "weights_sharded": False}
    report = compare(single, parallel)
    assert report["update_relative_difference"] == pytest.approx(0.1)
    assert report["max_loss_relative_difference"] == pytest.approx(0.1)
    assert report["loss_change"] == pytest.approx(-0.5) and report["initial_max_abs_difference"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", [None, "24gb:max_tokens_per_forward=100:per_device_train_batch_size=4"])
def test_two_cpu_processes_match_one_with_the_same_global_batch(tmp_path, bundled_model_dir, variant):
    """Also a fast path whose micro-batches run as several forwards, as many as each process's tokens need: with
    TRL's metrics gathered after every forward, processes with different forward counts paired the wrong
    collectives and hung (the fast path now reads its metrics at logging steps). Four rows a process keep a CPU
    step near a second; at 100 tokens a forward the two processes still run 3 and 4 forwards in one step."""
    out = tmp_path / "check"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(REPO / "benchmark/check_data_parallel.py"), "--tiny", "--launcher", "ddp",
           "--steps", "3", "--output_dir", str(out), *(["--variant", variant] if variant else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["passed"] and summary["parallel_mode"] == "MULTI_CPU"
    assert summary["update_norm"] > 0.05  # the adapter did move, so agreeing means something
    assert summary["update_relative_difference"] < 1e-5 and summary["max_loss_relative_difference"] < 1e-5
    assert (out / "results.md").read_text().count("\n| ") == 3  # three steps compared
