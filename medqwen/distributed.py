"""Running a script on several processes with `accelerate launch`, and collecting what each process measured.

The benchmarks use this to run the trainer the way users do on several GPUs (DDP or FSDP through our accelerate
configs) and to gather per-process numbers on the main process:

    proc = run_launched("ddp", processes=2, script="benchmark/perf_train.py", args=[...], timeout_s=600)
    # in the launched script:
    rows = gather(my_rows)          # list of every process's rows on every process (one process: [my_rows])
    if is_main_process(): print(...)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from medqwen.configlib import REPO_ROOT

# A launcher name is an accelerate config of ours; "single" is a plain process (no accelerate).
ACCELERATE_CONFIGS = {"ddp": "configs/accelerate/ddp_2gpu.yaml", "fsdp": "configs/accelerate/fsdp_2gpu.yaml"}
LAUNCHERS = ("single", *ACCELERATE_CONFIGS)


def rendezvous_port() -> int:
    """A TCP port nothing listens on now (for the rendezvous of one launch; two launches never share one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(launcher: str, processes: int, script: str | Path, args: list[str]) -> list[str]:
    """The argv that runs `script args` under `launcher` ("single": this Python; "ddp"/"fsdp": accelerate launch
    with our config for it and `processes` processes, one per GPU; on a machine without GPUs, CPU processes)."""
    if launcher == "single":
        return [sys.executable, str(script), *args]
    if launcher not in ACCELERATE_CONFIGS:
        raise ValueError(f"unknown launcher {launcher!r}; known: {', '.join(LAUNCHERS)}")
    # the accelerate next to this Python (a venv's bin/), else the one on PATH
    accelerate = Path(sys.executable).parent / "accelerate"
    accelerate = str(accelerate) if accelerate.exists() else (shutil.which("accelerate") or "accelerate")
    return [accelerate, "launch", "--config_file", str(REPO_ROOT / ACCELERATE_CONFIGS[launcher]),
            "--num_processes", str(processes), "--main_process_port", str(rendezvous_port()), str(script), *args]


def run_launched(launcher: str, processes: int, script: str | Path, args: list[str],
                 timeout_s: float) -> subprocess.CompletedProcess:
    """Run `script args` under `launcher` (accelerate_command), output captured; past `timeout_s` the launcher and
    every process it started are killed and subprocess.TimeoutExpired carries the output so far.

    A single process sees one GPU: given several, the Trainer would wrap the model in nn.DataParallel, which TRL
    refuses."""
    env = dict(os.environ)
    if launcher == "single":
        env["CUDA_VISIBLE_DEVICES"] = (env.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    argv = accelerate_command(launcher, processes, script, args)
    # its own process group: killing the launcher alone would leave its workers holding the GPUs
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout_s, output=stdout, stderr=stderr) from None
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def world_size() -> int:
    """Processes in this launch (1 outside accelerate/torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine (its GPU), 0 outside a launch."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def process_state():
    """accelerate's view of this process (rank, world size). On CPU it must be asked for with cpu=True, else
    processes started by `accelerate launch`/torchrun without GPUs each think they are alone."""
    from accelerate import PartialState

    return PartialState(cpu=not on_gpu())


def is_main_process() -> bool:
    """Whether this is the process that prints and writes (rank 0; the only one outside a launch)."""
    return process_state().is_main_process


def is_sharded(param) -> bool:
    """Whether a parameter is a shard of a larger tensor (FSDP2 keeps them as DTensors)."""
    return hasattr(param, "full_tensor")


def parallel_mode(trainer) -> dict:
    """What accelerate really ran for a trainer: its distributed type (without GPUs it runs the FSDP config as
    plain data parallel over gloo, MULTI_CPU) and whether the model's weights are sharded."""
    return {"distributed_type": trainer.accelerator.distributed_type.value,
            "weights_sharded": any(is_sharded(p) for p in trainer.model.parameters())}


def gather(obj) -> list:
    """Every process's `obj`, in rank order, on every process (needs the process group the Trainer set up)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
