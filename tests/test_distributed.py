"""medqwen.distributed: launch commands, and a timed-out launch leaves no process behind."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medqwen.distributed import accelerate_command, gather, run_launched
from tests.conftest import REPO


def test_commands_of_each_launcher():
    assert accelerate_command("single", 2, "s.py", ["--x", "1"]) == [sys.executable, "s.py", "--x", "1"]
    ddp = accelerate_command("ddp", 2, "s.py", ["--x", "1"])
    assert ddp[1:4] == ["launch", "--config_file", str(REPO / "configs/accelerate/ddp_2gpu.yaml")]
    assert ddp[ddp.index("--num_processes") + 1] == "2" and ddp[-3:] == ["s.py", "--x", "1"]
    fsdp = accelerate_command("fsdp", 4, "s.py", [])
    assert fsdp[3].endswith("fsdp_2gpu.yaml") and fsdp[fsdp.index("--num_processes") + 1] == "4"
    with pytest.raises(ValueError, match="unknown launcher 'deepspeed'"):
        accelerate_command("deepspeed", 2, "s.py", [])


def test_gather_without_a_process_group_is_this_process_only():
    assert gather({"a": 1}) == [{"a": 1}]


def test_single_process_sees_one_gpu(tmp_path, monkeypatch):
    script = tmp_path / "show.py"
    script.write_text("import os; print(os.environ['CUDA_VISIBLE_DEVICES'])")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert run_launched("single", 2, script, [], timeout_s=30).stdout.strip() == "3"


def test_timed_out_launch_kills_the_processes_it_started(tmp_path):
    """A launcher's workers would keep their GPUs after the launcher alone is killed."""
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, time
        worker = subprocess.Popen(["sleep", "60"])
        open({str(pid_file)!r}, "w").write(str(worker.pid))
        print("started", flush=True)
        time.sleep(60)
    """))
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as timeout:
        run_launched("single", 1, script, [], timeout_s=3)
    assert time.monotonic() - start < 30  # a surviving worker would hold the output pipe open for its 60 s
    assert "started" in timeout.value.output  # the output so far comes with the timeout
    stat = Path(f"/proc/{pid_file.read_text()}/stat")
    time.sleep(0.2)
    # gone, or a zombie waiting for init to reap it (killed either way)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
