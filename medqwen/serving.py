"""The one lifecycle of the model server: start agent/serve_vllm.sh, wait for /health with a deadline, stop it, and
make sure nothing outlives its parent. Standard library only, so the serving environment (which lacks this
package) runs it by path.

    with vllm_server(model=None, adapter="out/demo/lora", port=8001, log_path="serve.log") as base_url:
        ...                                              # Python (tests, the web page's `make web`)
    python medqwen/serving.py run --adapter out/demo/lora --port 8001 --log serve.log -- python agent/agent.py
                                                         # shell (scripts/demo.sh, make web): server up, run, stop
    python medqwen/serving.py exec --parent PID -- CMD   # serve_vllm.sh: CMD dies with PID, even on kill -9
    python medqwen/serving.py wait --port 8001 --pid PID --timeout_s 900   # serve_vllm.sh: until /health answers
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE_SCRIPT = REPO_ROOT / "agent" / "serve_vllm.sh"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ServerStartError(RuntimeError):
    """vLLM exited or did not become ready; the message carries the end of its log."""


def free_port(low: int = 8100, high: int = 8199) -> int:
    """The first port in [low, high] that nothing listens on."""
    for port in range(low, high + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {low}-{high}")


def healthy(port: int, timeout_s: float = 2.0) -> bool:
    """Whether a server answers /health on 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout_s):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child has exited although kill(0) still finds it
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _log_tail(path: Path | None, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path and path.is_file() else ""


def wait_ready(port: int, proc: subprocess.Popen | int, log_path: str | Path | None = None,
               timeout_s: float = 300.0) -> float:
    """Poll /health until the server answers (returns seconds waited); ServerStartError, with the end of its log,
    when the process (a Popen or a pid) exits first or the deadline passes."""
    start = time.monotonic()
    log = Path(log_path) if log_path else None
    while time.monotonic() - start < timeout_s:
        if healthy(port):
            return time.monotonic() - start
        exited = proc.poll() is not None if isinstance(proc, subprocess.Popen) else not _alive(proc)
        if exited:
            raise ServerStartError(f"the server exited before it was ready:\n{_log_tail(log)}")
        time.sleep(0.5)
    raise ServerStartError(f"no answer on port {port} within {timeout_s:.0f}s:\n{_log_tail(log)}")


def start_server(model: str | Path | None, adapter: str | Path | None, port: int, log_path: str | Path,
                 model_name: str = "lora-adapter", **env: str) -> subprocess.Popen:
    """Run agent/serve_vllm.sh in its own process group, output to `log_path`; extra env vars as keywords.

    model=None lets the script read the base model from the adapter's config.yaml, as users run it."""
    environ = {**os.environ, "VLLM_BASE_URL": f"http://localhost:{port}/v1", "MODEL_NAME": model_name,
               "ADAPTER_PATH": str(adapter) if adapter else "none", **env}
    environ.pop("MODEL_PATH", None)
    if model is not None:
        environ["MODEL_PATH"] = str(model)
    with open(log_path, "w") as log:
        # Own session (stop_server signals the group); dies with this process even when it is SIGKILLed.
        return subprocess.Popen(["bash", str(SERVE_SCRIPT)], env=environ, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=REPO_ROOT, preexec_fn=_die_with_parent)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_server(proc: subprocess.Popen, timeout_s: float = 60.0) -> bool:
    """SIGTERM the script (its trap stops vLLM and waits for it). True when everything it started exited by
    itself; otherwise the leftovers of the process group start_server created are SIGKILLed and False returned."""
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
            print(f"warning: serve_vllm.sh left processes behind; killed them (log: {log_path})", file=sys.stderr)


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (even by SIGKILL, which no trap sees)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def exec_with_parent(parent: int, command: list[str]) -> None:
    """Become `command`, which the kernel SIGTERMs when `parent` dies."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
        sys.exit(1)
    os.execvp(command[0], command)


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="Start serve_vllm.sh (unless a server already answers with --reuse), wait "
                                     "until ready, run COMMAND, stop the server; exits with COMMAND's status.")
    run.add_argument("--model", help="Base model folder (MODEL_PATH; default: the one the adapter's config.yaml "
                                     "names).")
    run.add_argument("--adapter", help="LoRA run folder served as --model_name (ADAPTER_PATH; none: base only).")
    run.add_argument("--model_name", default="lora-adapter", help="Served name of the adapter.")
    run.add_argument("--port", type=int, default=8001, help="Port of the server (TCP).")
    run.add_argument("--log", default="serve_vllm.log", help="File for the server's output.")
    run.add_argument("--timeout_s", type=float, default=900.0, help="Deadline for the server to answer /health "
                                                                    "(seconds).")
    run.add_argument("--reuse", action="store_true", help="Use a server that already answers on --port.")
    ex = sub.add_parser("exec", help="Become COMMAND; it gets SIGTERM when --parent dies.")
    ex.add_argument("--parent", type=int, required=True, help="Process id whose death stops COMMAND.")
    wait = sub.add_parser("wait", help="Exit 0 once 127.0.0.1:PORT/health answers; 1 if --pid exits first or the "
                                       "deadline passes.")
    wait.add_argument("--port", type=int, required=True, help="Port of the server (TCP).")
    wait.add_argument("--pid", type=int, required=True, help="Server process id.")
    wait.add_argument("--timeout_s", type=float, default=900.0, help="Deadline (seconds).")
    for p in (run, ex):
        p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments.")
    args = parser.parse_args(argv)
    command = args.command[1:] if getattr(args, "command", None) and args.command[0] == "--" else \
        getattr(args, "command", None)

    if args.action == "wait":
        try:
            waited = wait_ready(args.port, args.pid, timeout_s=args.timeout_s)
        except ServerStartError as err:
            print(f"serve_vllm: {str(err).strip()}", file=sys.stderr)
            return 1
        print(f"{waited:.0f}")
        return 0
    if not command:
        parser.error(f"{args.action}: give the command after --")
    if args.action == "exec":
        exec_with_parent(args.parent, command)
    # SIGTERM (kill, a supervisor) must stop the server too: exit through the `with` block below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.reuse and healthy(args.port):
        print(f"serving: reusing the server that answers on port {args.port}", flush=True)
        return subprocess.call(command)
    print(f"serving: starting agent/serve_vllm.sh on port {args.port} (log: {args.log})", flush=True)
    try:
        with vllm_server(args.model, args.adapter or None, args.port, args.log, args.model_name,
                         args.timeout_s) as url:
            print(f"serving: ready at {url}", flush=True)
            return subprocess.call(command, env={**os.environ, "VLLM_BASE_URL": url})
    except ServerStartError as err:
        print(f"serving: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(_cli())
