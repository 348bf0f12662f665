"""Start, wait for and stop agent/serve_vllm.sh from Python (tests, demos, measurements).

    with vllm_server(model="model/smollm2-135m-instruct", adapter="out/demo/lora", port=8001) as base_url:
        ...  # an OpenAI-compatible server with the adapter served as "lora-adapter"

The server is the same script users run, so tests exercise exactly what users start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from medqwen.configlib import REPO_ROOT

SERVE_SCRIPT = REPO_ROOT / "agent" / "serve_vllm.sh"


class ServerStartError(RuntimeError):
    """vLLM exited or did not become ready; the message carries the end of its log."""


def free_port(low: int = 8100, high: int = 8199) -> int:
    """The first port in [low, high] that nothing listens on."""
    for port in range(low, high + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def start_server(model: str | Path | None, adapter: str | Path | None, port: int, log_path: str | Path,
                 model_name: str = "lora-adapter", **env: str) -> subprocess.Popen:
    """Run agent/serve_vllm.sh in its own process group, output to `log_path`; extra env vars as keywords.

    model=None lets the script read the base model from the adapter's config.yaml, as users run it."""
    environ = {**os.environ, "VLLM_BASE_URL": f"http://localhost:{port}/v1", "MODEL_NAME": model_name,
               "ADAPTER_PATH": str(adapter) if adapter else "none", **env}
    environ.pop("MODEL_PATH", None)
    if model is not None:
        environ["MODEL_PATH"] = str(model)
    log = open(log_path, "w")
    return subprocess.Popen(["bash", str(SERVE_SCRIPT)], env=environ, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO_ROOT)


def wait_ready(port: int, proc: subprocess.Popen, log_path: str | Path, timeout_s: float = 300.0) -> None:
    """Poll /health until the server answers; ServerStartError with its log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise ServerStartError(f"serve_vllm.sh exited with {proc.returncode}:\n{_log_tail(Path(log_path))}")
        time.sleep(0.5)
    raise ServerStartError(f"no answer on port {port} within {timeout_s:.0f}s:\n{_log_tail(Path(log_path))}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_server(proc: subprocess.Popen, timeout_s: float = 60.0) -> bool:
    """SIGTERM the script (its trap stops vLLM and waits for it). True when everything it started exited by
    itself; otherwise the leftovers of the process group this module created are SIGKILLed and False returned."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)  # only the group start_server created
        proc.wait()
        return False
    return True


@contextlib.contextmanager
def vllm_server(model: str | Path | None, adapter: str | Path | None, port: int, log_path: str | Path | None = None,
                model_name: str = "lora-adapter", timeout_s: float = 300.0, **env: str) -> Iterator[str]:
    """A running server for the `with` block; yields its base URL (http://localhost:PORT/v1)."""
    log_path = Path(log_path or f"vllm-{port}.log")
    proc = start_server(model, adapter, port, log_path, model_name, **env)
    try:
        wait_ready(port, proc, log_path, timeout_s)
        yield f"http://localhost:{port}/v1"
    finally:
        if not stop_server(proc):
            print(f"warning: serve_vllm.sh left processes behind; killed them (log: {log_path})")
