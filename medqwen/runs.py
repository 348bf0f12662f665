"""Which weights a model choice stands for: the one place that turns --model / --adapter / --model_type into
(base or merged model folder, adapter run folder or None), with one clear error when something is missing.

    --model PATH          a base or merged model folder (HF format) or hub id
    --adapter RUN_DIR     a LoRA/GRPO run folder; its base is read from its config.yaml unless --model is given
    --model_type TYPE     shorthand: base (model/qwen), lora / grpo / merged (the default run folders below)

Shell scripts ask the same question through the CLI (one `key=value` line each, for `eval`-free parsing):

    python -m medqwen.runs out/qwen3-4b-lora-medical          # model=model/qwen  adapter=out/...  rank=8
    python -m medqwen.runs --model_type merged
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from medqwen.configlib import UserError, load_saved_config

DEFAULT_MODEL = "model/qwen"
DEFAULT_RUN_DIRS = {"lora": "out/qwen3-4b-lora-medical", "grpo": "out/qwen3-4b-grpo-medical",
                    "merged": "out/qwen3-4b-lora-medical-merged"}
MODEL_TYPES = ("base", "lora", "grpo", "merged")
# The key a run's config.yaml names its base model by: `model` now; runs saved before the rename used the others.
BASE_KEYS = ("model", "model_name_or_path", "base_model")
# vLLM's --max-lora-rank accepts only these values.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
QWEN_DOWNLOAD_HINT = (
    "Download the base model first, e.g.\n"
    "  huggingface-cli download Qwen/Qwen3-4B-Instruct-2507 --local-dir model/qwen\n"
    "or point the model flag (--model) at the bundled demo model\n"
    "  model/smollm2-135m-instruct (created by `make setup`)."
)


class RunNotFoundError(UserError, FileNotFoundError):
    """A model folder or run folder that is not there: the message says what is missing and what makes it."""


@dataclass(frozen=True)
class ModelChoice:
    """The weights to load: `model` (a base or merged folder), with the LoRA adapter in `adapter` on top."""

    model: str
    adapter: str | None = None

    @property
    def label(self) -> str:
        return self.model + (f" + {self.adapter}" if self.adapter else "")


def _make_command(kind: str, folder: str) -> str:
    if kind == "merged":
        return f"python trainer/merge_lora.py --adapter {DEFAULT_RUN_DIRS['lora']} --output_dir {folder}"
    return f"python trainer/train_{'grpo' if kind == 'grpo' else 'lora'}.py --output_dir {folder}"


def looks_like_hub_id(path: str | Path) -> bool:
    """`org/name` that is not an existing path: let transformers resolve it from the hub (users with access)."""
    text = str(path)
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/", "model/", "out/"))


def check_model(path: str, named_by: str | None = None) -> str:
    """`path` when it is a model folder (or a hub id); else RunNotFoundError saying how to get it. The one check of
    a model folder: every stage calls it once, through resolve_model or before its run writes anything."""
    if looks_like_hub_id(path) or (Path(path) / "config.json").is_file():
        return path
    source = f" (named by {named_by})" if named_by else ""
    what = "does not exist" if not Path(path).exists() else "holds no config.json"
    hint = "pass --model PATH for the base model, or:\n" if named_by else ""
    raise RunNotFoundError(f"model folder '{path}'{source} {what}; {hint}{QWEN_DOWNLOAD_HINT}")


def saved_base_model(run_dir: str | Path) -> str | None:
    """The base model a LoRA/GRPO run was trained on: its config.yaml, else PEFT's adapter_config.json."""
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        saved = load_saved_config(run_dir / "config.yaml")
        base = next((saved[k] for k in BASE_KEYS if saved.get(k)), None)
        if base:
            return str(base)
    if (run_dir / "adapter_config.json").is_file():
        base = json.loads((run_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base:
            return str(base)
    return None


def check_adapter(run_dir: str, kind: str = "lora") -> str:
    """`run_dir` when it holds a LoRA adapter; else RunNotFoundError with the command that trains one."""
    if (Path(run_dir) / "adapter_config.json").is_file():
        return run_dir
    what = "does not exist" if not Path(run_dir).exists() else "holds no adapter_config.json"
    raise RunNotFoundError(f"adapter folder '{run_dir}' {what}: no LoRA adapter there. Train it first "
                           f"({_make_command(kind, run_dir)}) or pass --adapter RUN_DIR.")


def resolve_model(model: str | None = None, adapter: str | None = None, model_type: str | None = None) -> ModelChoice:
    """The weights for a model choice (see the module docstring); RunNotFoundError when something is missing.

    model_type None: an adapter means a LoRA run, else the base model. With merged, `adapter` (or `model`) may
    name the merged folder instead of the default one."""
    kind = model_type or ("lora" if adapter else "base")
    if kind not in MODEL_TYPES:
        raise UserError(f"model_type {kind!r} is not one of {list(MODEL_TYPES)}")
    if kind == "base":
        return ModelChoice(check_model(model or DEFAULT_MODEL))
    if kind == "merged":
        folder = adapter or model or DEFAULT_RUN_DIRS["merged"]
        if not (Path(folder) / "config.json").is_file():
            what = "does not exist" if not Path(folder).exists() else "holds no config.json"
            raise RunNotFoundError(f"merged model folder '{folder}' {what}. Merge a LoRA run first "
                                   f"({_make_command('merged', folder)}) or pass --model PATH.")
        return ModelChoice(folder)
    run_dir = check_adapter(adapter or DEFAULT_RUN_DIRS[kind], kind)
    if model:
        return ModelChoice(check_model(model), run_dir)
    base = saved_base_model(run_dir)
    if not base:
        raise RunNotFoundError(f"cannot tell the base model of '{run_dir}' (no config.yaml or adapter_config.json "
                               "naming it); pass --model PATH for the base model.")
    return ModelChoice(check_model(base, named_by=f"{run_dir}/config.yaml"), run_dir)


def vllm_lora_rank(run_dir: str | Path) -> int:
    """The smallest --max-lora-rank vLLM accepts that fits the adapter's rank."""
    path = Path(run_dir) / "adapter_config.json"
    try:
        rank = json.loads(path.read_text())["r"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read the LoRA rank r from '{path}' ({type(err).__name__}: {err})") from None
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UserError(f"adapter rank r={rank!r} in '{path}' is not a positive whole number")
    fits = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fits:
        raise UserError(f"adapter rank {rank} of '{run_dir}' is above {VLLM_LORA_RANKS[-1]}, the largest vLLM serves; "
                        "retrain with a smaller --lora_r, or merge it (python trainer/merge_lora.py) and serve the "
                        "merged folder as MODEL_PATH with ADAPTER_PATH=none")
    return fits[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medqwen.runs",
                                     description="Print the model folder (and adapter, its vLLM rank) a choice means.")
    parser.add_argument("adapter", nargs="?", help="LoRA/GRPO run folder (or, with --model_type merged, the merged "
                                                   "folder).")
    parser.add_argument("--model", help="Base or merged model folder (default: the run's base, else model/qwen).")
    parser.add_argument("--model_type", "--model-type", choices=MODEL_TYPES, help="Shorthand for default folders.")
    args = parser.parse_args(argv)
    choice = resolve_model(args.model, args.adapter, args.model_type)
    print(f"model={choice.model}")
    if choice.adapter:
        print(f"adapter={choice.adapter}")
        print(f"rank={vllm_lora_rank(choice.adapter)}")


if __name__ == "__main__":
    from medqwen.cli import USER_ERRORS, fail

    try:
        main()
    except USER_ERRORS as err:
        fail(str(err))
