"""The one interactive loop of run.py, agent/agent.py and agent/rag_query.py: same prompt, quit words and /reset.

    repl(lambda text: print(answer(text)), prompt="\\nyou> ", on_reset=history.clear)

An empty line is ignored; exit, quit, /exit, /quit, 退出 or Ctrl-D end the session; Ctrl-C during an answer
interrupts that answer only. Errors inside `on_input` are the caller's to report: the loop goes on after them.
"""

from __future__ import annotations

from typing import Callable

QUIT_WORDS = ("exit", "quit", "/exit", "/quit", "退出")
RESET_WORD = "/reset"
HELP = "/reset clears the history; exit, quit or Ctrl-D quits"


def repl(on_input: Callable[[str], object], prompt: str = "\nyou> ", on_reset: Callable[[], object] | None = None,
         read: Callable[[str], str] | None = None, write: Callable[[str], object] = print) -> None:
    """Read lines (`read`, default input()) until a quit word or end of input; call `on_input(line)` for each
    non-empty one."""
    try:
        import readline  # noqa: F401 -- arrow keys and line history for input()
    except ImportError:
        pass
    while True:
        try:
            line = (read or input)(prompt).strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        if line.lower() in QUIT_WORDS:
            return
        if line == RESET_WORD and on_reset is not None:
            on_reset()
            write("[history cleared]")
            continue
        if not line:
            continue
        try:
            on_input(line)
        except KeyboardInterrupt:
            write("\n[interrupted]")
