"""run.py: one-shot and interactive chat, adapters, and a clear message for a missing model."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_py(*args, stdin=None, timeout=120):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_prompt_streams_a_reply_from_tiny_model(tiny_model_dir):
    out = run_py("--model", str(tiny_model_dir), "--prompt", "hello", "--max_new_tokens", "8", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "no tokens were streamed"


def test_interactive_session_keeps_history_and_exits(tiny_model_dir, monkeypatch):
    """Each turn is generated from the whole conversation so far (with the earlier replies), /reset empties it
    (the system message stays), and /exit ends the session before the next line is read."""
    out = run_py("--model", str(tiny_model_dir), "--max_new_tokens", "4", stdin="hi\n/reset\nagain\n/exit\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("assistant>") == 2

    sys.path.insert(0, str(REPO))
    import run
    from medqwen.chat_config import ChatConfig
    from medqwen.configlib import parse_config

    seen, replies, real_print_streamed_reply = [], [], run.print_streamed_reply

    def recording(model, tokenizer, messages, cfg):
        seen.append([dict(m) for m in messages])
        replies.append(real_print_streamed_reply(model, tokenizer, messages, cfg))
        return replies[-1]

    lines = iter(["hi", "more", "/reset", "again", "/exit", "never read"])
    monkeypatch.setattr(run, "print_streamed_reply", recording)
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    run.main(parse_config(ChatConfig, ["--model", str(tiny_model_dir), "--max_new_tokens", "4", "--temperature", "0",
                                       "--system", "be brief"], environ={}))
    system, user = {"role": "system", "content": "be brief"}, lambda text: {"role": "user", "content": text}
    assert seen == [[system, user("hi")],
                    [system, user("hi"), {"role": "assistant", "content": replies[0]}, user("more")],
                    [system, user("again")]]
    assert next(lines) == "never read"


def test_missing_model_gives_download_hint(tmp_path):
    out = run_py("--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert out.returncode != 0
    assert "does not exist" in out.stderr and "huggingface-cli download" in out.stderr
    assert "smollm2-135m-instruct" in out.stderr


def test_adapter_is_applied(tiny_model_dir, tmp_path):
    """A LoRA adapter with non-zero weights changes the greedy reply; loading it goes through --adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(50.0)
    model.save_pretrained(tmp_path / "adapter")
    base = run_py("--model", str(tiny_model_dir), "--prompt", "hello", "--max_new_tokens", "12", "--temperature", "0")
    tuned = run_py("--model", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"), "--prompt", "hello",
                   "--max_new_tokens", "12", "--temperature", "0")
    assert base.returncode == tuned.returncode == 0, tuned.stderr
    assert base.stdout != tuned.stdout


@pytest.mark.slow
def test_bundled_model_answers_sensibly(bundled_model_dir):
    out = run_py("--model", str(bundled_model_dir), "--prompt", "What is the capital of France?",
                 "--max_new_tokens", "20", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
