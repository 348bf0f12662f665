"""Run a training script in a child process and SIGKILL it once its first complete checkpoint exists."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from medqwen.train.common import last_checkpoint

REPO = Path(__file__).resolve().parent.parent


def kill_after_first_checkpoint(script: str, argv: list[str], output_dir: Path, timeout_s: float = 300) -> int:
    """Start `script` with `argv`, SIGKILL it when a checkpoint appears in `output_dir`; the checkpoint's step.

    Fails when the run ends on its own first (then the test would resume nothing) or leaves its final adapter.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / script), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while last_checkpoint(output_dir) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed:\n{stderr[-2000:]}"
    assert not (output_dir / "adapter_config.json").exists()  # killed before the final adapter
    return int(last_checkpoint(output_dir).name.split("-")[1])
