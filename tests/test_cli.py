"""medqwen/cli.py: how every script runs (config echo on stderr, user errors as `error:` + status 2), and that every
script which parses a config goes through it."""

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from medqwen.cli import run_script
from medqwen.configlib import UserError, _f

REPO = Path(__file__).resolve().parent.parent
SCRIPT_DIRS = ("agent", "benchmark", "data", "eval", "trainer", "scripts")
# Scripts still being edited elsewhere; they move to run_script next, and this set is then emptied.
NOT_YET_CONVERTED: set[str] = set()


@dataclass
class ToyConfig:
    steps: int = _f(3, "How many steps.", at_least=1)
    name: str = _f("toy", "A name.")


class ToyDataError(UserError):
    """A user mistake of one area, as the areas define theirs."""


def run(main, argv=(), capsys=None, **kwargs) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        run_script(ToyConfig, main, argv=list(argv), **kwargs)
    captured = capsys.readouterr()
    return ended.value.code, captured.out, captured.err


@pytest.fixture(autouse=True)
def script_name(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmark" / "toy_script.py")])
    monkeypatch.delenv("RANK", raising=False)


def test_the_config_is_echoed_on_stderr_under_the_script_name(capsys):
    status, out, err = run(lambda cfg: print(f"result {cfg.steps}"), ["--steps", "5"], capsys)
    assert status == 0 and out == "result 5\n"  # stdout keeps only the results
    assert err == "toy_script config:\n  steps: 5\n  name: toy\n"


def test_echo_can_be_turned_off_by_a_test_of_the_config_and_prepare_runs_before_it(capsys, monkeypatch):
    assert run(lambda cfg: None, ["--steps", "2"], capsys, echo=lambda cfg: cfg.steps != 2) == (0, "", "")
    prepared = run(lambda cfg: print(cfg.name), [], capsys, prepare=lambda cfg: ToyConfig(cfg.steps, "prepared"))
    assert prepared == (0, "prepared\n", "toy_script config:\n  steps: 3\n  name: prepared\n")
    monkeypatch.setenv("RANK", "1")  # a launched process other than the first prints no config
    assert run(lambda cfg: None, [], capsys) == (0, "", "")


@pytest.mark.parametrize("error", [ToyDataError("line 3 of data.jsonl is not JSON: fix it"),
                                   FileNotFoundError("model/qwen does not exist: download it first")])
def test_user_errors_end_with_error_and_status_2(error, capsys):
    def main(cfg):
        raise error

    status, out, err = run(main, [], capsys)
    assert status == 2 and out == ""
    assert err.endswith(f"error: {error}\n") and "Traceback" not in err


def test_a_bad_flag_value_is_status_2_before_main_runs(capsys):
    status, _, err = run(lambda cfg: pytest.fail("main ran"), ["--steps", "0"], capsys)
    assert status == 2 and "steps: must be at least 1, got 0" in err


def test_any_other_exception_keeps_its_traceback(capsys):
    def main(cfg):
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):  # not turned into `error:` and status 2
        run_script(ToyConfig, main, argv=[])
    assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize("returned, status", [(None, 0), (1, 1), (0, 0), ({"loss": 1.0}, 0), (True, 0)])
def test_mains_int_return_is_the_exit_status(returned, status, capsys):
    assert run(lambda cfg: returned, [], capsys)[0] == status


# ------------------------------------------------------------------------------------------------------
# Every script with a config runs through run_script


def scripts() -> list[Path]:
    return [REPO / "run.py"] + sorted(p for d in SCRIPT_DIRS for p in (REPO / d).glob("*.py"))


def entry_problems(text: str) -> list[str]:
    """What keeps a script's text from running the one way; [] when it does (or has no config at all)."""
    head, _, main_block = text.partition('if __name__ == "__main__":')
    shared = re.search(r"^from (medqwen[\w.]*) import .*\bcli\b", text, re.M)  # eval/*.py: a package's cli()
    if shared and re.search(r"^\s+cli\(", main_block, re.M):
        text = (REPO / (shared.group(1).replace(".", "/") + ".py")).read_text(encoding="utf-8")
        main_block = text[text.index("def cli("):]
    if "parse_config(" not in text and "run_script(" not in text:
        return []  # argparse only, no config dataclass
    problems = []
    if "parse_config(" in text:
        problems.append("parses its config itself")
    if "format_config(" in text:
        problems.append("echoes its config itself")
    if "run_main(" in text or re.search(r"file=sys.stderr\)\s*\n\s*return 2", text):
        problems.append("reports its own errors")
    if "run_script(" not in main_block:
        problems.append("does not end in run_script")
    return problems


def test_every_script_with_a_config_runs_through_run_script():
    found = {str(p.relative_to(REPO)): entry_problems(p.read_text(encoding="utf-8")) for p in scripts()}
    offenders = {name: problems for name, problems in found.items() if problems}
    assert len(found) > 20
    assert {k: v for k, v in offenders.items() if k not in NOT_YET_CONVERTED} == {}
    assert sorted(NOT_YET_CONVERTED - set(offenders)) == [], "converted: take it off NOT_YET_CONVERTED"
