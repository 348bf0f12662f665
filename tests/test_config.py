"""Config precedence (default < env < YAML < CLI), types, errors, and secrets never saved."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from medqwen.chat_config import ChatConfig
from medqwen.configlib import _f, build_parser, parse_config, resolve_config, save_config
from medqwen.train.config import TrainConfig


@dataclasses.dataclass
class DemoConfig:
    base_url: str = _f("http://localhost:8001/v1", "Server URL.", env="VLLM_BASE_URL")
    model_name: str = _f("lora-adapter", "Served model name.", env="MODEL_NAME")
    api_key: str | None = _f(None, "API key.", env="OPENWEATHER_API_KEY", secret=True)
    learning_rate: float = _f(1e-4, "Peak learning rate.")
    epochs: int = _f(2, "Passes over the data.")
    packing: bool = _f(False, "Pack examples.")
    inputs: list[str] = _f([], "Input files.")
    style: str = _f("official", "Prompt style.", choices=["official", "lm-eval"])


def test_defaults_equal_declared_values():
    cfg = parse_config(DemoConfig, [], environ={})
    assert cfg == DemoConfig()
    assert TrainConfig().model == "model/qwen" and ChatConfig().model is None


def test_precedence_default_env_yaml_cli(tmp_path):
    env = {"VLLM_BASE_URL": "http://env:1/v1", "MODEL_NAME": "env-model"}
    assert parse_config(DemoConfig, [], environ=env).base_url == "http://env:1/v1"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("base_url: http://yaml:2/v1\nepochs: 5\n")
    cfg = parse_config(DemoConfig, ["--config", str(cfg_file)], environ=env)
    assert (cfg.base_url, cfg.model_name, cfg.epochs) == ("http://yaml:2/v1", "env-model", 5)
    cfg = parse_config(DemoConfig, ["--config", str(cfg_file), "--base_url", "http://cli:3/v1"], environ=env)
    assert cfg.base_url == "http://cli:3/v1" and cfg.epochs == 5


def test_types_bools_lists_and_dashed_flags():
    cfg = parse_config(DemoConfig, ["--learning-rate", "3e-4", "--packing", "--inputs", "a", "--inputs", "b"],
                       environ={})
    assert cfg.learning_rate == 3e-4 and cfg.packing is True and cfg.inputs == ["a", "b"]
    assert parse_config(DemoConfig, ["--no-packing"], environ={}).packing is False
    # comma-separated values split the same way from a flag (repeated or not) as from the environment or YAML
    cfg = parse_config(DemoConfig, ["--inputs", "a, b", "--inputs", "c,"], environ={})
    assert cfg.inputs == ["a", "b", "c"]


def test_list_choices_are_checked_item_by_item(capsys):
    from medqwen.perf.config import PerfTrainConfig

    assert parse_config(PerfTrainConfig, ["--launchers", "single,ddp", "--launchers", "fsdp"],
                        environ={}).launchers == ["single", "ddp", "fsdp"]
    with pytest.raises(SystemExit):
        parse_config(PerfTrainConfig, ["--launchers", "single,deepspeed"], environ={})
    assert "'deepspeed' is not one of ['single', 'ddp', 'fsdp']" in capsys.readouterr().err


def test_lower_bounds_are_checked_from_every_layer(tmp_path, capsys):
    from medqwen.rag.config import RagConfig

    with pytest.raises(SystemExit):
        parse_config(RagConfig, ["--max_chunks_per_source", "-1"], environ={})
    assert "max_chunks_per_source: must be at least 0, got -1" in capsys.readouterr().err
    parse_config(RagConfig, [], environ={})  # the defaults are within their bounds
    with pytest.raises(SystemExit):
        parse_config(RagConfig, ["--help"], environ={})
    assert "(at least 1)" in capsys.readouterr().out
    bad = tmp_path / "rag.yaml"
    bad.write_text("top_k: 0\n")
    with pytest.raises(ValueError, match="top_k: must be at least 1, got 0"):
        resolve_config(RagConfig, cli={"config": str(bad)})
    assert parse_config(RagConfig, ["--max_chunks_per_source", "0"], environ={}).max_chunks_per_source == 0


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "two"], "expected int"),
    (["--style", "fancy"], "invalid choice"),
    (["--no_such_flag", "1"], "unrecognized arguments"),
])
def test_bad_cli_values_exit_with_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, argv, environ={})
    assert message in capsys.readouterr().err


def test_bad_yaml_is_reported_with_file_and_field(tmp_path):
    import re

    bad = tmp_path / "bad.yaml"
    where = re.escape(str(bad))
    bad.write_text("epochs: 2\nlearning_rat: 1\n")
    with pytest.raises(ValueError, match=rf"^--config {where}: unknown field\(s\) \['learning_rat'\]"):
        resolve_config(DemoConfig, cli={"config": str(bad)})
    bad.write_text("learning_rate: 0.0001\nepochs: two\n")
    with pytest.raises(ValueError, match=rf"^{where}:epochs: expected int, got 'two'"):
        resolve_config(DemoConfig, cli={"config": str(bad)})
    bad.write_text("epochs: [unclosed\n")
    with pytest.raises(ValueError, match=rf"^--config {where}: invalid YAML"):
        resolve_config(DemoConfig, cli={"config": str(bad)})
    missing = re.escape(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match=rf"^--config {missing}: no such file"):
        resolve_config(DemoConfig, cli={"config": str(tmp_path / "missing.yaml")})
    with pytest.raises(ValueError, match=r"^--epochs: expected int, got 'x'"):
        resolve_config(DemoConfig, environ={}, cli={"epochs": "x"})


def test_secret_read_from_env_but_never_saved(tmp_path):
    cfg = parse_config(DemoConfig, [], environ={"OPENWEATHER_API_KEY": "sk-secret-123"})
    assert cfg.api_key == "sk-secret-123"
    path = save_config(cfg, tmp_path / "config.yaml")
    text = path.read_text()
    assert "sk-secret-123" not in text and "api_key" not in text
    assert yaml.safe_load(text)["base_url"] == "http://localhost:8001/v1"


def test_dotenv_file_is_read_but_real_env_wins(tmp_path):
    (tmp_path / ".env").write_text("MODEL_NAME=from-dotenv\nVLLM_BASE_URL=http://dotenv:9/v1\n")
    code = ("from medqwen.configlib import parse_config; from tests.test_config import DemoConfig; "
            "c = parse_config(DemoConfig, []); print(c.model_name, c.base_url)")
    env = {"PATH": "", "VLLM_BASE_URL": "http://real-env:8/v1",
           "PYTHONPATH": str(__import__('pathlib').Path(__file__).parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["from-dotenv", "http://real-env:8/v1"]


def test_help_explains_every_field():
    text = build_parser(DemoConfig).format_help()
    for f in dataclasses.fields(DemoConfig):
        assert f"--{f.name}" in text
    assert "[env: VLLM_BASE_URL]" in text and "secret" in text


def _stage_configs():
    """Every dataclass defined in a config module of the package (`config.py` of an area, or `*_config.py`)."""
    import importlib
    import pkgutil

    import medqwen

    found = []
    for info in pkgutil.walk_packages(medqwen.__path__, "medqwen."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf == "config" or leaf.endswith("_config"):
            module = importlib.import_module(info.name)
            found += [obj for obj in vars(module).values()
                      if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__]
    assert len(found) >= 19, [c.__name__ for c in found]  # every stage config, wherever its area keeps it
    return found


@pytest.mark.parametrize("cls", _stage_configs(), ids=lambda c: c.__name__)
def test_every_stage_config_has_help_for_every_field(cls):
    """--help renders (argparse chokes on a bare %) and no field is undocumented."""
    text = build_parser(cls).format_help()
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        assert f"--{f.name}" in text
    parse_config(cls, [], environ={})  # the defaults resolve


# -- values are checked, never guessed (YAML, environment and CLI alike) ------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("epochs: 3.7\n", "epochs: expected a whole number, got 3.7"),
    ("epochs: true\n", "epochs: expected a number, got True"),
    ("learning_rate: false\n", "learning_rate: expected a number, got False"),
    ("model_name: [a, b]\n", "model_name: expected one str, got ['a', 'b']"),
    ("learning_rate: .nan\n", "learning_rate: expected a finite number"),
    ("learning_rate: .inf\n", "learning_rate: expected a finite number"),
    ("packing: 2\n", "packing: expected true/false, got 2"),
    ("inputs: {a: 1}\n", "inputs: expected a list"),
])
def test_yaml_values_are_not_coerced(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}:" + message.replace("[", r"\[").replace("]", r"\]")):
        resolve_config(DemoConfig, cli={"config": str(path)})


def test_yaml_scalars_that_mean_text_stay_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_name: 7\nepochs: 3\nlearning_rate: 1\n")
    cfg = resolve_config(DemoConfig, cli={"config": str(path)})
    assert (cfg.model_name, cfg.epochs, cfg.learning_rate) == ("7", 3, 1.0) and isinstance(cfg.learning_rate, float)


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "nan"], "--learning_rate: expected a finite number, got 'nan'"),
    (["--learning_rate=-inf"], "--learning_rate: expected a finite number, got '-inf'"),
    (["--epochs", "2.5"], "--epochs: expected int, got '2.5'"),
])
def test_cli_numbers_must_be_finite_and_whole_where_whole(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        parse_config(DemoConfig, argv, environ={})
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_environment_values_are_checked_too():
    with pytest.raises(ValueError, match=r"\$TIMEOUT: expected a finite number"):
        resolve_config(RangeConfig, environ={"TIMEOUT": "nan"})


@dataclasses.dataclass
class RangeConfig:
    ratio: float = _f(0.1, "Held-out fraction.", at_least=0, below=1)
    timeout_s: float = _f(10.0, "Timeout (seconds).", above=0, env="TIMEOUT")
    top_p: float = _f(0.8, "Nucleus mass.", above=0, at_most=1)
    sizes: list[int] = _f([1], "Sizes.", at_least=1)


@pytest.mark.parametrize("field, value, message", [
    ("ratio", "1.5", "ratio: must be in [0, 1), got 1.5"), ("ratio", "1", "ratio: must be in [0, 1), got 1.0"),
    ("timeout_s", "0", "timeout_s: must be above 0, got 0.0"), ("timeout_s", "-3", "above 0, got -3.0"),
    ("top_p", "0", "top_p: must be in (0, 1], got 0.0"), ("top_p", "1.01", "in (0, 1], got 1.01"),
    ("sizes", "2,0", "sizes: must be at least 1, got [2, 0]"),
])
def test_ranges_are_checked_with_the_field_named(field, value, message, capsys):
    with pytest.raises(SystemExit) as err:
        parse_config(RangeConfig, [f"--{field}", value], environ={})
    assert err.value.code == 2 and message in capsys.readouterr().err
    parse_config(RangeConfig, ["--ratio", "0", "--top_p", "1", "--timeout_s", "0.5"], environ={})  # the edges


def test_help_shows_ranges():
    text = " ".join(build_parser(RangeConfig).format_help().split())
    assert "(in [0, 1))" in text and "(above 0)" in text and "(in (0, 1])" in text


@pytest.mark.parametrize("script, argv, message", [
    ("agent/rag_query.py", ["--chunk_overlap", "500"], "chunk_overlap (500) must be smaller than chunk_size (200)"),
    ("agent/agent.py", ["--temperature", "nan"], "--temperature: expected a finite number, got 'nan'"),
    ("agent/agent.py", ["--timeout_s", "-1"], "timeout_s: must be above 0, got -1.0"),
    ("trainer/train_lora.py", ["--eval_ratio", "1.5"], "eval_ratio: must be in [0, 1), got 1.5"),
    ("trainer/train_lora.py", ["--lora_dropout", "1"], "lora_dropout: must be in [0, 1), got 1.0"),
    ("run.py", ["--top_p", "0"], "top_p: must be in (0, 1], got 0.0"),
])
def test_scripts_refuse_bad_values_without_a_traceback(script, argv, message):
    root = __import__("pathlib").Path(__file__).parent.parent
    out = subprocess.run([sys.executable, script, *argv], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-1500:]


def test_stage_configs_check_overlap_against_chunk_size():
    from medqwen.rag.config import RagConfig

    with pytest.raises(ValueError, match="chunk_overlap"):
        RagConfig(chunk_size=100, chunk_overlap=100)
    assert RagConfig(chunk_size=100, chunk_overlap=99).chunk_overlap == 99


def test_api_key_reads_vllm_api_key_first_then_openai_api_key():
    from medqwen.evaluate.config import EvalConfig
    from medqwen.exams.config import CevalConfig

    for cls in (EvalConfig, CevalConfig):
        assert resolve_config(cls, environ={"OPENAI_API_KEY": "o"}).api_key == "o"
        assert resolve_config(cls, environ={"OPENAI_API_KEY": "o", "VLLM_API_KEY": "v"}).api_key == "v"


def test_old_field_names_are_read_from_flags_and_yaml(tmp_path):
    from medqwen.evaluate.config import EvalConfig
    from medqwen.rag.config import RagConfig

    path = tmp_path / "old.yaml"
    path.write_text("model_name_or_path: m\nrequest_timeout_s: 5\n")
    cfg = resolve_config(EvalConfig, cli={"config": str(path)})
    assert (cfg.model, cfg.timeout_s) == ("m", 5.0)
    assert parse_config(RagConfig, ["--local_model", "x"], environ={}).model == "x"
    path.write_text("model: a\nmodel_name_or_path: b\n")
    with pytest.raises(ValueError, match="model and model_name_or_path name the same field"):
        resolve_config(EvalConfig, cli={"config": str(path)})
