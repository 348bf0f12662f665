"""The one way a script runs: parse its config, echo it to stderr under the script's name, run `main`, and turn a
mistake the user can fix into `error: <message>` and exit status 2 (the status argparse uses for a bad flag).

    if __name__ == "__main__":
        run_script(TrainConfig, main)      # main(cfg) -> None, an exit status, or a summary (status 0)

A user's mistake is a `UserError` (every error class a user can fix subclasses it: bad data, a missing run, a
store or server that cannot be reached), a missing file or a refused connection; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TypeVar

from medqwen.configlib import UserError, format_config, parse_config

C = TypeVar("C")
# ConnectionError: a server that is down (the message says how to start it).
USER_ERRORS = (UserError, FileNotFoundError, ConnectionError)


def is_first_process() -> bool:
    """Rank 0 of a launch (accelerate/torchrun set RANK), or the only process: the one that prints the config."""
    return os.environ.get("RANK", "0") == "0"


def echo_config(cfg: Any, name: str | None = None) -> None:
    """The resolved config on stderr, headed by the script's name, so stdout keeps only the script's results."""
    if is_first_process():
        name = name or Path(sys.argv[0]).stem
        print(f"{name} config:\n{format_config(cfg)}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    """End the script the way every user error ends it."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def run_script(cls: type[C], main: Callable[[C], Any], *, argv: Sequence[str] | None = None,
               description: str | None = None, echo: bool | Callable[[C], bool] = True,
               prepare: Callable[[C], C] | None = None) -> NoReturn:
    """Parse `cls` from the command line, echo it, run `main(cfg)` and exit with its status.

    `prepare(cfg)` fills in what follows from the script itself (the eval scripts' own model type) before the echo,
    so the echo shows what runs; `echo` may be a test of the config (a benchmark's child processes stay quiet).
    """
    try:
        cfg = parse_config(cls, argv, description)
        if prepare is not None:
            cfg = prepare(cfg)
    except USER_ERRORS as err:  # a bad --config file or value
        fail(str(err))
    if echo(cfg) if callable(echo) else echo:
        echo_config(cfg)
    try:
        status = main(cfg)
    except USER_ERRORS as err:
        fail(str(err))
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)
