"""One benchmark variant in its own process (an OOM or a crash ends only that variant) and its result row."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from medqwen.distributed import run_launched

# The child prints its result as one line starting with this mark; the parent reads the last such line.
MARK = "PERF_RESULT "


def print_result(result: dict) -> None:
    """What a child process prints for its parent (run_variant)."""
    print(MARK + json.dumps(result), flush=True)


def run_variant(script: str | Path, args: list[str], spec: str, log: Path, timeout_s: float,
                launcher: str = "single", processes: int = 1) -> dict:
    """Run `script args --run_one spec` (under `launcher`) with a time limit; its printed result, or an error row
    ("out of memory", "timed out after N s", or the first failing exception). The output goes to `log`."""
    try:
        proc = run_launched(launcher, processes, script, [*args, "--run_one", spec], timeout_s)
        stdout, stderr, status = proc.stdout, proc.stderr, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as timeout:
        stdout, stderr, status = timeout.output or "", timeout.stderr or "", "timed out"
    with log.open("a", encoding="utf-8") as f:
        f.write(f"===== {spec} on {launcher} ({status})\n{stdout[-20000:]}\n{stderr[-20000:]}\n")
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):  # measured, even if the processes were slow to exit after it
            return json.loads(line[len(MARK):])
    if status == "timed out":
        return {"error": f"timed out after {timeout_s} s"}
    lines = (stderr or stdout).strip().splitlines()
    if any("OutOfMemory" in line or "out of memory" in line for line in lines):
        return {"error": "out of memory"}
    # the first failing process's exception, not the launcher's ChildFailedError that follows it
    cause = [line for line in lines if ("Error" in line or "Unsupported" in line) and "ChildFailed" not in line
             and "elastic" not in line][:2]
    return {"error": " | ".join(cause or lines[-3:])[-600:]}
