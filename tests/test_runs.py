"""medqwen/runs.py: one answer to "which weights?" for every stage, and one error for each thing that is missing.

Every stage that takes a model choice is run as the user runs it (a subprocess): a missing adapter run, a run
whose config.yaml names a missing base model, and a missing merged folder each end with exit status 2 and the
same `error:` message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medqwen.configlib import UserError
from medqwen.runs import (
    DEFAULT_RUN_DIRS,
    ModelChoice,
    RunNotFoundError,
    resolve_model,
    saved_base_model,
    vllm_lora_rank,
)

REPO = Path(__file__).resolve().parent.parent


def fake_run(folder: Path, base: str | None, key: str = "model", rank: int = 8) -> Path:
    """A run folder as the trainer leaves it, as far as resolution looks: adapter_config.json + config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    (folder / "config.yaml").write_text(yaml.safe_dump({key: base} if base else {"seed": 1}))
    return folder


# -- the library ------------------------------------------------------------------------------------------------

def test_base_lora_and_merged_choices(tiny_model_dir, tmp_path):
    run = fake_run(tmp_path / "run", str(tiny_model_dir))
    assert resolve_model(str(tiny_model_dir)) == ModelChoice(str(tiny_model_dir))
    assert resolve_model(adapter=str(run)) == ModelChoice(str(tiny_model_dir), str(run))
    assert resolve_model(adapter=str(run), model_type="grpo").adapter == str(run)
    assert resolve_model(str(tiny_model_dir), str(run)).label == f"{tiny_model_dir} + {run}"
    assert resolve_model(str(tiny_model_dir), model_type="merged") == ModelChoice(str(tiny_model_dir))
    assert resolve_model("Qwen/Qwen3-4B-Instruct-2507").model == "Qwen/Qwen3-4B-Instruct-2507"  # a hub id


@pytest.mark.parametrize("key", ["model", "model_name_or_path", "base_model"])
def test_runs_saved_before_the_rename_still_name_their_base(tiny_model_dir, tmp_path, key):
    run = fake_run(tmp_path / "run", str(tiny_model_dir), key=key)
    assert saved_base_model(run) == str(tiny_model_dir)
    assert resolve_model(adapter=str(run)).model == str(tiny_model_dir)


def test_base_falls_back_to_peft_adapter_config_then_asks(tiny_model_dir, tmp_path):
    run = fake_run(tmp_path / "run", None)
    with pytest.raises(RunNotFoundError, match="cannot tell the base model .*pass --model PATH"):
        resolve_model(adapter=str(run))
    (run / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": str(tiny_model_dir)}))
    assert resolve_model(adapter=str(run)).model == str(tiny_model_dir)


def test_explicit_model_wins_over_the_runs_base(tiny_model_dir, tmp_path):
    run = fake_run(tmp_path / "run", str(tmp_path / "gone"))
    assert resolve_model(str(tiny_model_dir), str(run)) == ModelChoice(str(tiny_model_dir), str(run))


def test_errors_are_user_errors_with_the_command_that_makes_the_missing_thing(tmp_path):
    with pytest.raises(UserError, match=r"no LoRA adapter there\. Train it first \(python trainer/train_grpo.py"):
        resolve_model(adapter=str(tmp_path / "x"), model_type="grpo")
    with pytest.raises(UserError, match=r"Merge a LoRA run first \(python trainer/merge_lora.py --adapter "
                                        + DEFAULT_RUN_DIRS["lora"]):
        resolve_model(model=str(tmp_path / "m"), model_type="merged")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no adapter_config.json"):
        resolve_model(adapter=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="model_type 'fused' is not one of"):
        resolve_model(model_type="fused")


def test_vllm_rank_is_the_smallest_that_fits(tmp_path):
    assert [vllm_lora_rank(fake_run(tmp_path / str(r), "b", rank=r)) for r in (4, 8, 12, 300)] == [8, 8, 16, 320]
    with pytest.raises(UserError, match="above 512"):
        vllm_lora_rank(fake_run(tmp_path / "big", "b", rank=1024))


def test_cli_prints_what_shell_scripts_need(tiny_model_dir, tmp_path):
    run = fake_run(tmp_path / "run", str(tiny_model_dir), rank=12)
    out = subprocess.run([sys.executable, "-m", "medqwen.runs", str(run)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"model={tiny_model_dir}", f"adapter={run}", "rank=16"]


# -- every stage: the same message, exit status 2 ---------------------------------------------------------------

def missing(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """case -> (folder to pass, the message every stage must print)."""
    no_base = tmp_path / "no-base"
    run = fake_run(tmp_path / "run-missing-base", str(no_base))
    return {
        "adapter": (str(tmp_path / "no-run"), f"error: adapter folder '{tmp_path / 'no-run'}' does not exist: "
                                              "no LoRA adapter there."),
        "base": (str(run), f"error: model folder '{no_base}' (named by {run}/config.yaml) does not exist; "
                           "pass --model PATH"),
        "merged": (str(tmp_path / "no-merged"), f"error: merged model folder '{tmp_path / 'no-merged'}' does not "
                                                "exist. Merge a LoRA run first"),
    }


STAGES = {  # stage -> case -> argv (with {} for the folder); None: the stage has no such choice
    "run.py": {"adapter": ["run.py", "--adapter", "{}", "--prompt", "hi"],
               "base": ["run.py", "--adapter", "{}", "--prompt", "hi"],
               "merged": ["run.py", "--model_type", "merged", "--model", "{}", "--prompt", "hi"]},
    "eval": {"adapter": ["eval/eval_lora.py", "--adapter", "{}"],
             "base": ["eval/eval_grpo.py", "--adapter", "{}"],
             "merged": ["eval/eval_base.py", "--model_type", "merged", "--model", "{}"]},
    "benchmark": {"adapter": ["benchmark/benchmark_ceval.py", "--model-type", "lora", "--run_dir", "{}"],
                  "base": ["benchmark/benchmark_ceval.py", "--model_type", "grpo", "--adapter", "{}"],
                  "merged": ["benchmark/benchmark_ceval.py", "--model-type", "merged", "--run_dir", "{}"]},
    "merge": {"adapter": ["trainer/merge_lora.py", "--adapter", "{}"],
              "base": ["trainer/merge_lora.py", "--adapter", "{}"]},
    "grpo-init-adapter": {"adapter": ["trainer/train_grpo.py", "--init_adapter", "{}", "--report_to", "none"],
                          "base": ["trainer/train_grpo.py", "--init_adapter", "{}", "--report_to", "none"]},
    "runs-cli": {"adapter": ["-m", "medqwen.runs", "{}"], "base": ["-m", "medqwen.runs", "{}"],
                 "merged": ["-m", "medqwen.runs", "--model_type", "merged", "{}"]},
}


@pytest.mark.parametrize("stage, case", [(s, c) for s, cases in STAGES.items() for c in cases])
def test_every_stage_fails_with_the_same_message(stage, case, tmp_path):
    folder, message = missing(tmp_path)[case]
    argv = [a.replace("{}", folder) for a in STAGES[stage][case]]
    out = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("case", ["adapter", "base"])
def test_serve_script_fails_with_the_same_message(case, tmp_path):
    folder, message = missing(tmp_path)[case]
    env = {**os.environ, "ADAPTER_PATH": folder, "VLLM_PYTHON": sys.executable, "PYTHONPATH": str(REPO),
           "VLLM_BASE_URL": "http://localhost:8991/v1"}
    env.pop("MODEL_PATH", None)
    out = subprocess.run(["bash", "agent/serve_vllm.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert message in out.stderr, out.stderr[-2000:]
