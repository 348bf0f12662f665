"""The config machinery every stage uses: dataclass defaults < environment (.env too) < --config YAML < CLI flags.

A stage config (in its area's config.py, e.g. medqwen/train/config.py, built from the shared field groups at the
end of this file) is a dataclass whose fields are made with `_f`: the field's metadata carries its `help` (with
units), the environment variable(s) that may set it (`env`: the first one set wins), whether it is a secret
(`secret`: read at call time, never saved), its `choices`, its range (`at_least`/`above`/`at_most`/`below`)
and older names still accepted on the command line and in YAML (`aliases`).

    cfg = parse_config(TrainConfig)            # in a script's main()
    save_config(cfg, out_dir / "config.yaml")  # next to every output, secrets left out

Scripts run through medqwen/cli.py's `run_script(Config, main)`: a `UserError` (or a config error) prints
`error: <message>` on stderr and exits with status 2, the status argparse uses for a bad flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from medqwen.safe_http import clipped_repr, strip_userinfo

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = "template/qwen_chat_template.jinja"


def repo_path(path: str | Path) -> Path:
    """A path as given when it exists (or is absolute), else the same relative path under the repository root: the
    shipped files (template, rubric, samples) are found whichever folder a script runs from."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists() or not (REPO_ROOT / path).exists():
        return path
    return REPO_ROOT / path

C = TypeVar("C")


class UserError(ValueError):
    """A mistake the user can fix (a missing file, a bad value): shown as `error: <message>`, exit status 2."""


def _f(default: Any, help: str, *, env: str | Sequence[str] | None = None, secret: bool = False,
       choices: Sequence | None = None, at_least: float | None = None, above: float | None = None,
       at_most: float | None = None, below: float | None = None, aliases: Sequence[str] = ()):
    """A dataclass field with its help text and optional env variable(s), secret flag, choices, range, aliases."""
    envs = [env] if isinstance(env, str) else list(env or [])
    meta = {"help": help, "env": envs, "secret": secret, "choices": choices, "at_least": at_least, "above": above,
            "at_most": at_most, "below": below, "aliases": list(aliases)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def like(group: type, name: str, default: Any = dataclasses.MISSING, **overrides: Any):
    """A group's field again with another default and/or metadata (help, aliases, range...): a stage that shares
    the field but not its default."""
    f = next(f for f in dataclasses.fields(group) if f.name == name)
    if default is dataclasses.MISSING:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    meta = {**f.metadata, **overrides}
    return _f(default, meta.pop("help"), **meta)


# ----------------------------------------------------------------------------------------------------------
# Values


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for `X | None`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Convert a string (env/CLI) or YAML value to the field's type; anything that would need guessing is an error
    (3.7 into an int, true into a number, a list into a text, nan or inf anywhere)."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ValueError(f"{name}: a value is required")
    if typing.get_origin(inner) is list:
        (item_type,) = typing.get_args(inner) or (str,)
        if isinstance(value, dict):
            raise ValueError(f"{name}: expected a list, got {clipped_repr(value)}")
        items = []
        for v in [value] if isinstance(value, (str, int, float)) else value:
            # "a,b" is two items wherever it comes from: one env/YAML string or each value of a repeated flag
            items += [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else [v]
        return [_convert(v, item_type, name) for v in items]
    if isinstance(value, (list, dict)):
        raise ValueError(f"{name}: expected one {getattr(inner, '__name__', inner)}, got {clipped_repr(value)}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {clipped_repr(value)}")
    if inner in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected a number, got {clipped_repr(value)}")
        if inner is int and isinstance(value, float):
            raise ValueError(f"{name}: expected a whole number, got {clipped_repr(value)}")
        try:
            number = inner(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected {inner.__name__}, got {clipped_repr(value)}") from None
        if inner is float and not math.isfinite(number):
            raise ValueError(f"{name}: expected a finite number, got {clipped_repr(value)}")
        return number
    if inner is str:
        if isinstance(value, bool):  # YAML's true/false, as the user wrote it
            return str(value).lower()
        return str(value)
    try:
        return inner(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {getattr(inner, '__name__', inner)}, got {clipped_repr(value)}") from None


def _range_text(meta: typing.Mapping[str, Any]) -> str:
    low = (f"[{meta['at_least']}" if meta.get("at_least") is not None
           else f"({meta['above']}" if meta.get("above") is not None else None)
    high = (f"{meta['at_most']}]" if meta.get("at_most") is not None
            else f"{meta['below']})" if meta.get("below") is not None else None)
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"at least {low[1:]}" if low[0] == "[" else f"above {low[1:]}"
    if high:
        return f"at most {high[:-1]}" if high[-1] == "]" else f"below {high[:-1]}"
    return ""


def _check_range(value: Any, meta: typing.Mapping[str, Any]) -> bool:
    """True when every number in value lies in the field's range."""
    for v in value if isinstance(value, list) else [value]:
        if v is None or isinstance(v, (str, bool)):
            continue
        if ((meta.get("at_least") is not None and v < meta["at_least"])
                or (meta.get("above") is not None and v <= meta["above"])
                or (meta.get("at_most") is not None and v > meta["at_most"])
                or (meta.get("below") is not None and v >= meta["below"])):
            return False
    return True


def check_values(cfg: Any) -> None:
    """ValueError naming the first field whose value is outside its choices or range."""
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        choices = meta.get("choices")
        for item in (value if isinstance(value, list) else [value]) if choices else []:
            if item is not None and item not in choices:
                raise ValueError(f"{f.name}: {clipped_repr(item)} is not one of {list(choices)}")
        if not _check_range(value, meta):
            raise ValueError(f"{f.name}: must be {_range_text(meta)}, got {clipped_repr(value)}")


# ----------------------------------------------------------------------------------------------------------
# Parsing

MAX_YAML_BYTES = 1_000_000  # a config is a few kilobytes
MAX_YAML_DEPTH = 50


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: a config never needs them, and an alias bomb (a few hundred
    bytes that expand to gigabytes) is then impossible; what is read is never larger than the file."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in config files: "
                                              "write the value out", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "anchors (&name) are not allowed in config files: "
                                              "write the value out", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's data, without anchors or aliases and at most MAX_YAML_BYTES long (bounded time and memory)."""
    path = Path(path)
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ValueError(f"{path} is larger than {MAX_YAML_BYTES:,} bytes; a config file is a few kilobytes")
    text = path.read_text(encoding="utf-8")
    depth = deepest = 0
    for ch in text:  # brackets counted without reading quotes: a config never nests 50 levels, even by accident
        depth += (ch in "[{") - (ch in "]}")
        deepest = max(deepest, depth)
    if deepest > MAX_YAML_DEPTH:
        raise ValueError(f"{path} nests brackets more than {MAX_YAML_DEPTH} levels deep; a config is flat")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 -- a SafeLoader
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply for a config file") from None


# Variables that choose where requests (and the keys sent with them) go. A `.env` in the working folder may be
# anyone's (a downloaded project, a shared folder): it may not set these, so it can never send the user's keys
# to a host of its choosing, https or not.
ENDPOINT_SUFFIXES = ("_BASE_URL", "_HOST", "_URL", "_ENDPOINT")


def _is_endpoint(name: str) -> bool:
    return name.upper().endswith(ENDPOINT_SUFFIXES)


def load_dotenv_file(path: str | os.PathLike | None = None) -> None:
    """Load `.env` into os.environ without overriding variables already set: `path`, else the repository root's
    and the working folder's. Endpoint variables (URLs, hosts) from a working-folder `.env` outside the
    repository are skipped with a warning: they would receive the keys set in the environment or the
    repository's `.env`."""
    try:
        from dotenv import dotenv_values
    except ImportError:  # python-dotenv is in requirements.txt; a bare GPU image may lack it
        return
    trusted = (Path(path) if path else REPO_ROOT / ".env").resolve()
    candidates = [trusted] if path else [Path.cwd() / ".env", trusted]  # the working folder's wins, as before
    seen: set[Path] = set()
    for candidate in candidates:
        if not candidate.is_file() or candidate.resolve() in seen:
            continue
        seen.add(candidate.resolve())
        foreign = candidate.resolve() != trusted
        for name, value in dotenv_values(candidate).items():
            if value is None or name in os.environ:
                continue
            if foreign and _is_endpoint(name):
                print(f"warning: {candidate} sets {name}, ignored: a working-folder .env may not choose where "
                      "requests and keys go; export it or put it in the repository's .env", file=sys.stderr)
                continue
            os.environ[name] = value


def _flags(name: str) -> list[str]:
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field (`--a_b` and `--a-b`, plus its aliases), defaults left unset."""
    parser = argparse.ArgumentParser(description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="YAML", help="YAML file of field: value pairs; CLI flags override it.")
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(_field_type(cls, f))
        aliases = list(f.metadata.get("aliases", ()))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if f.metadata.get("env"):
            help_text += f" [env: {', '.join(f.metadata['env'])}]"
        if _range_text(f.metadata):
            help_text += f" ({_range_text(f.metadata)})"
        if aliases:
            help_text += f" (also read as {', '.join('--' + a for a in aliases)})"
        if f.metadata.get("secret"):
            help_text += " (secret: never saved)"
            default = None
        help_text = (help_text + f" (default: {default!r})").replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if f.metadata.get("choices") and typing.get_origin(tp) is not list:  # list items: checked after splitting
            kwargs["choices"] = list(f.metadata["choices"])
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            kwargs["action"] = "append"
            kwargs["metavar"] = "VALUE"
        else:
            kwargs["metavar"] = getattr(tp, "__name__", "VALUE").upper()
        parser.add_argument(*_flags(f.name), **kwargs)
        if aliases:  # older names: accepted, listed in the field's help only
            parser.add_argument(*[flag for alias in aliases for flag in _flags(alias)],
                                **{**kwargs, "help": argparse.SUPPRESS})
    return parser


def parse_config(cls: type[C], argv: Sequence[str] | None = None, description: str | None = None,
                 environ: dict[str, str] | None = None) -> C:
    """Resolve a stage config: defaults < environment (.env too) < `--config` YAML < CLI flags."""
    parser = build_parser(cls, description)
    args = vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    if environ is None:
        load_dotenv_file()
        environ = dict(os.environ)
    return resolve_config(cls, cli=args, environ=environ, parser=parser)


def field_names(cls: type) -> dict[str, str]:
    """Every accepted name (field names and their aliases) -> the field's name."""
    names = {}
    for f in dataclasses.fields(cls):
        names.update({alias: f.name for alias in f.metadata.get("aliases", ())})
    names.update({f.name: f.name for f in dataclasses.fields(cls)})
    return names


def resolve_config(cls: type[C], cli: dict[str, Any] | None = None, environ: dict[str, str] | None = None,
                   parser: argparse.ArgumentParser | None = None) -> C:
    """Merge the four layers; errors name the layer and the field (through parser.error when a parser is given)."""
    cli = dict(cli or {})
    environ = environ or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}

    def fail(message: str) -> typing.NoReturn:
        if parser is not None:
            parser.error(message)
        raise ValueError(message)

    for name, f in fields.items():  # environment: the first variable set wins
        var = next((v for v in f.metadata.get("env", ()) if environ.get(v) not in (None, "")), None)
        if var:
            try:
                values[name] = _convert(environ[var], _field_type(cls, f), f"${var}")
            except ValueError as err:
                fail(str(err))

    yaml_path = cli.pop("config", None)
    if yaml_path:
        path = Path(yaml_path)
        if not path.is_file():
            fail(f"--config {yaml_path}: no such file")
        try:
            data = load_yaml(path)
        except (yaml.YAMLError, ValueError) as err:
            fail(f"--config {yaml_path}: invalid YAML: {clipped_repr(str(err), 400)[1:-1]}")
        if not isinstance(data, dict):
            fail(f"--config {yaml_path}: expected a mapping of field: value")
        names = field_names(cls)
        unknown = sorted(str(k) for k in set(data) - set(names))
        if unknown:
            fail(f"--config {yaml_path}: unknown field(s) {clipped_repr(unknown)}; valid: {sorted(fields)}")
        seen: dict[str, str] = {}
        for key, value in data.items():
            name = names[key]
            if name in seen:
                fail(f"--config {yaml_path}: {seen[name]} and {key} name the same field; keep one")
            seen[name] = key
            try:
                values[name] = _convert(value, _field_type(cls, fields[name]), f"{yaml_path}:{key}")
            except ValueError as err:
                fail(str(err))

    for name, value in cli.items():  # CLI
        try:
            values[name] = _convert(value, _field_type(cls, fields[name]), f"--{name}")
        except ValueError as err:
            fail(str(err))

    try:
        cfg = cls(**values)  # __post_init__ checks that span several fields
        check_values(cfg)
    except ValueError as err:
        fail(str(err))
    return cfg


def spread_values(argv: Sequence[str], flag: str = "--compare") -> list[str]:
    """`--compare a b c` -> `--compare a --compare b --compare c` (the config parser takes one value per flag)."""
    out, taking = [], False
    for arg in argv:
        if arg in (flag, flag.replace("_", "-")):
            taking = True
            continue
        if taking and not arg.startswith("-"):
            out += [flag, arg]
            continue
        taking = False
        out.append(arg)
    return out


# ----------------------------------------------------------------------------------------------------------
# Saving and reading


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data, secrets left out (also a password in the userinfo of a URL value)."""
    def clean(value: Any) -> Any:
        return strip_userinfo(value) if isinstance(value, str) and "://" in value else value

    return {f.name: clean(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if not f.metadata.get("secret")}


def save_config(cfg: Any, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config as YAML (secrets never written). `extra` adds derived values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    if extra:
        data.update(extra)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def load_saved_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a `config.yaml` written by save_config (e.g. a LoRA run's, to find its base model)."""
    return load_yaml(path) or {}


def format_config(cfg: Any) -> str:
    """The resolved config, one `field: value` per line, for printing at start."""
    return "\n".join(f"  {k}: {v}" for k, v in config_to_dict(cfg).items())


# ----------------------------------------------------------------------------------------------------------
# Shared field groups: each field defined once; a stage that needs another default uses `like`.

MODEL_ALIASES = ["model_name_or_path", "base_model", "local_model"]


@dataclass
class ModelFields:
    """A model folder and the chat template that renders its conversations."""

    model: str = _f("model/qwen", "Base or merged model folder (HF format) or hub id.", aliases=MODEL_ALIASES)
    chat_template: str = _f(DEFAULT_TEMPLATE, "Jinja chat template file used to render conversations.")


@dataclass
class ModelChoiceFields(ModelFields):
    """Which weights to load (medqwen/runs.py resolves them): a model folder, a run's adapter on its base, or a
    default run folder by type."""

    model: str | None = like(ModelFields, "model", None, help="Base or merged model folder (HF format) or hub id "
                                                              "(None: model/qwen, or with --adapter the base named "
                                                              "in the run's config.yaml).")
    adapter: str | None = _f(None, "LoRA/GRPO run folder (a trainer output_dir) applied on the base model (None: "
                                   "none, or the default folder of --model_type).")
    model_type: str | None = _f(None, "Shorthand for the default folders: base (model/qwen), lora "
                                      "(out/qwen3-4b-lora-medical), grpo (out/qwen3-4b-grpo-medical), merged "
                                      "(out/qwen3-4b-lora-medical-merged) (None: lora with --adapter, else base).",
                                choices=["base", "lora", "grpo", "merged"])


@dataclass
class ThinkingFields:
    enable_thinking: bool | None = _f(None, "Hybrid Qwen3 models only: false appends an empty think block.")


@dataclass
class DeviceFields:
    device: str | None = _f(None, "torch device (None: cuda if available, else cpu).")
    dtype: str | None = _f(None, "torch dtype (None: bfloat16 on cuda, float32 on cpu).")


@dataclass
class SamplingFields:
    temperature: float = _f(0.7, "Sampling temperature; 0 means greedy decoding.", at_least=0)
    top_p: float = _f(0.8, "Nucleus sampling probability mass.", above=0, at_most=1)


@dataclass
class ServerFields:
    """An OpenAI-compatible server (the vLLM one agent/serve_vllm.sh starts)."""

    base_url: str = _f("http://localhost:8001/v1", "OpenAI-compatible server URL.", env="VLLM_BASE_URL")
    served_model: str = _f("lora-adapter", "Model name on that server (the LoRA adapter's name on our vLLM server).",
                           env="MODEL_NAME")
    api_key: str | None = _f(None, "Server API key (vLLM needs one only when started with --api-key).",
                             env=["VLLM_API_KEY", "OPENAI_API_KEY"], secret=True)
    timeout_s: float = _f(120.0, "Timeout of one model request (seconds).", above=0)


@dataclass
class RunFields:
    output_dir: str = _f("out/run", "Run folder: config.yaml, metrics.json and the stage's outputs.")
    seed: int = _f(42, "Random seed.")
