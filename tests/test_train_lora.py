"""LoRA SFT mechanics on the tiny random Qwen3: data, the template that really trains, packing, outputs,
resume after SIGKILL, atomic checkpoints, two-process training."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medqwen.configlib import load_saved_config
from medqwen.data import DataError
from medqwen.data.conversations import read_conversations, split_conversations
from medqwen.train.config import TrainConfig
from medqwen.train.sft import build_trainer, last_checkpoint, to_dataset, train
from tests.kill import kill_after_first_checkpoint

REPO = Path(__file__).resolve().parent.parent
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}]


def toy_conversations(n: int = 24) -> list[dict]:
    """Varied lengths, a system prompt, a multi-turn dialogue and a tool call, in the repository's format."""
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Question {i}: how much is {i} plus {i}?" + " Please." * (i % 5)},
                    {"role": "assistant", "content": f"{i} plus {i} is {2 * i}." + " Indeed." * (i % 7)}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "You are a careful assistant."})
        if i % 4 == 1:
            messages += [{"role": "user", "content": "And doubled?"},
                         {"role": "assistant", "content": f"Doubled it is {4 * i}."}]
        rows.append({"conversations": messages})
    rows.append({"conversations": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp_c": 21}'},
        {"role": "assistant", "content": "It is 21 °C in Paris."}], "tools": TOOLS})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    return write_jsonl(toy_conversations(), tmp_path_factory.mktemp("data") / "toy.jsonl")


def tiny_cfg(model_dir, data, out, **overrides) -> TrainConfig:
    kwargs = dict(model=str(model_dir), data_path=str(data), output_dir=str(out), max_seq_len=128,
                  per_device_train_batch_size=2, per_device_eval_batch_size=2, gradient_accumulation_steps=1,
                  learning_rate=1e-2, max_steps=4, eval_steps=2, logging_steps=1, report_to="none", eval_ratio=0.1)
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def as_flags(cfg: TrainConfig) -> list[str]:
    """The CLI flags that reproduce a config (lists left at their defaults)."""
    flags = []
    for key, value in vars(cfg).items():
        if isinstance(value, bool):
            flags.append(f"--{key}" if value else f"--no-{key}")
        elif value is not None and not isinstance(value, list):
            flags.append(f"--{key}={value}")
    return flags


# ------------------------------------------------------------------------------------------------------
# Data


def test_reads_messages_alias_and_names_bad_line(tmp_path):
    path = write_jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
                       tmp_path / "ok.jsonl")
    assert read_conversations(path)[0]["conversations"][1]["content"] == "hello"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text() + '{"conversations": [{"role": "user", "content": "hi"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        read_conversations(bad)
    with pytest.raises(FileNotFoundError, match="prepare_data.py"):
        read_conversations(tmp_path / "missing.jsonl")


def test_help_lists_every_flag_and_missing_inputs_fail_before_writing(tmp_path):
    from medqwen.configlib import build_parser
    from medqwen.runs import RunNotFoundError

    text = build_parser(TrainConfig).format_help()
    for flag in ("--model_name_or_path", "--data_path", "--output_dir", "--num_train_epochs", "--max_steps",
                 "--per_device_train_batch_size", "--gradient_accumulation_steps", "--learning_rate", "--lora_r",
                 "--lora_alpha", "--lora_dropout", "--max_seq_len", "--packing", "--report_to",
                 "--resume_from_checkpoint"):
        assert flag in text, flag
    with pytest.raises(RunNotFoundError, match="does not exist"):
        train(TrainConfig(model=str(tmp_path / "no-model"), output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_split_is_seeded_disjoint_and_complete():
    rows = [{"id": i} for i in range(50)]
    train_a, eval_a = split_conversations(rows, 0.1, seed=1)
    train_b, eval_b = split_conversations(rows, 0.1, seed=1)
    assert (train_a, eval_a) == (train_b, eval_b) and len(eval_a) == 5
    assert sorted(r["id"] for r in train_a + eval_a) == list(range(50))
    assert split_conversations(rows, 0.1, seed=2)[1] != eval_a


# ------------------------------------------------------------------------------------------------------
# The template that actually trains


def test_trains_on_our_template_with_our_mask(tiny_model_dir, toy_data, tmp_path):
    """TRL >= 1.1 swaps in its own template when ours lacks generation markers: prove ours is the one used."""
    from medqwen.chat import encode_with_assistant_mask, load_chat_template

    cfg = tiny_cfg(tiny_model_dir, toy_data, tmp_path, max_seq_len=4096)
    rows = read_conversations(toy_data)
    trainer = build_trainer(cfg, to_dataset(rows))
    assert trainer.chat_template is None  # TRL kept the tokenizer's template ...
    assert trainer.processing_class.chat_template == load_chat_template()  # ... which is ours
    assert not trainer.args.bf16 and not trainer.args.gradient_checkpointing  # CPU: both off
    assert len(trainer.train_dataset) == len(rows)
    for row, conv in zip(trainer.train_dataset, rows):
        ids, mask = encode_with_assistant_mask(trainer.processing_class, conv["conversations"], tools=conv.get("tools"))
        assert row["input_ids"] == ids
        assert row["labels"] == [t if m else -100 for t, m in zip(ids, mask)]
    tool_row = trainer.train_dataset[len(rows) - 1]
    trained = trainer.processing_class.decode([t for t in tool_row["labels"] if t != -100])
    assert '"arguments": {"city": "Paris"}' in trained and "21 °C" in trained and "Weather" not in trained


def test_template_without_generation_markers_is_refused(tiny_model_dir, toy_data, tmp_path):
    """With the official Qwen3-2507 template (no markers) TRL would train on its own copy: we refuse instead."""
    from trl.chat_template_utils import qwen3_instruct_2507_chat_template

    from medqwen.chat import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = qwen3_instruct_2507_chat_template
    with pytest.raises(RuntimeError, match="generation"):
        build_trainer(tiny_cfg(tiny_model_dir, toy_data, tmp_path), to_dataset(read_conversations(toy_data)),
                      tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------------
# Packing


def _token_losses(model, batch):
    """Cross-entropy of every predicted token (target = labels shifted left), -100 targets dropped."""
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():  # use_cache=False as SFTTrainer.compute_loss sets it: with a cache, transformers
        logits = model(**inputs, use_cache=False).logits.float()  # ignores restarting position ids
    targets = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100,
                                               reduction="none")
    return losses, targets != -100


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_per_example(tiny_model_dir, toy_data, tmp_path, attn):
    import torch
    from transformers import AutoModelForCausalLM

    rows = read_conversations(toy_data)
    plain = build_trainer(tiny_cfg(tiny_model_dir, toy_data, tmp_path / "a", max_seq_len=256), to_dataset(rows))
    packed = build_trainer(tiny_cfg(tiny_model_dir, toy_data, tmp_path / "b", max_seq_len=256, packing=True),
                           to_dataset(rows))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn).eval()

    expected = {}
    for row in plain.train_dataset:
        losses, keep = _token_losses(model, plain.data_collator([row]))
        expected[tuple(row["input_ids"])] = losses[keep].mean().item()

    got = {}
    assert len(packed.train_dataset) < len(plain.train_dataset)  # really packed several per row
    for row in packed.train_dataset:
        batch = packed.data_collator([row])
        assert "attention_mask" not in batch  # padding-free: the block structure comes from position_ids
        losses, keep = _token_losses(model, batch)
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        for start, end in zip(starts, starts[1:]):
            segment = slice(start, end - 1)  # predictions made inside this example
            ids = tuple(batch["input_ids"][0, start:end].tolist())
            got[ids] = losses[0, segment][keep[0, segment]].mean().item()
    assert got.keys() == expected.keys()
    for ids, loss in expected.items():
        assert math.isclose(got[ids], loss, rel_tol=1e-4), (got[ids], loss)


# ------------------------------------------------------------------------------------------------------
# A whole run, resume, atomic checkpoints


def test_run_writes_adapter_config_split_metrics_and_log_lines(tiny_model_dir, toy_data, tmp_path, capsys):
    from medqwen.modeling import load_model

    out = tmp_path / "run"
    summary = train(tiny_cfg(tiny_model_dir, toy_data, out, report_to="tensorboard"))
    printed = capsys.readouterr().out
    assert "step 1/4 | loss " in printed and " tok/s | " in printed and "ETA " in printed
    assert summary["global_step"] == 4 and summary["best_eval_loss"] is not None
    saved = load_saved_config(out / "config.yaml")
    assert saved["model"] == str(tiny_model_dir) and saved["train_conversations"] == 23
    assert len((out / "split" / "eval.jsonl").read_text().splitlines()) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("final_eval_loss", "best_eval_loss", "global_step", "train_tokens", "wall_time_s", "peak_memory_gb"):
        assert metrics["summary"][key] is not None, key
    assert metrics["meta"]["seed"] == 42
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert (out / "chat_template.jinja").is_file() and not (out / ".staging").exists()
    model = load_model(saved["model"], adapter=out)  # downstream: base found in config.yaml
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_kill_after_checkpoint_then_resume_matches_uninterrupted_run(tiny_model_dir, toy_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    steps = 16
    reference = train(tiny_cfg(tiny_model_dir, toy_data, tmp_path / "ref", max_steps=steps, eval_steps=4))

    out = tmp_path / "killed"
    argv = as_flags(tiny_cfg(tiny_model_dir, toy_data, out, max_steps=steps, eval_steps=4))
    killed_at = kill_after_first_checkpoint("trainer/train_lora.py", argv, out, timeout_s=120)
    assert 0 < killed_at < steps

    resumed = train(tiny_cfg(tiny_model_dir, toy_data, out, max_steps=steps, eval_steps=4,
                             resume_from_checkpoint="true"))
    assert resumed["resumed_from"].endswith(f"checkpoint-{killed_at}")
    assert resumed["global_step"] == reference["global_step"] == steps
    assert Path(resumed["best_checkpoint"]).name == Path(reference["best_checkpoint"]).name
    a = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


def test_a_save_that_dies_midway_leaves_no_checkpoint(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    """The process dies after the weights were written but before the optimizer state: no checkpoint-4."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    original = SFTTrainer._save_rng_state

    def dies_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(SFTTrainer, "_save_rng_state", dies_at_step_4)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tiny_model_dir, toy_data, out, max_steps=6))
    assert not (out / "checkpoint-4").exists()
    assert last_checkpoint(out) == out / "checkpoint-2"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "checkpoint-2")


# ------------------------------------------------------------------------------------------------------
# Several processes


def test_two_cpu_processes_train_and_save_one_adapter(tiny_model_dir, toy_data, tmp_path):
    """accelerate (DDP over gloo on CPU): two processes, 2 steps, exactly one adapter written."""
    out = tmp_path / "ddp"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "ddp_2gpu.yaml"), str(REPO / "trainer" / "train_lora.py"),
           f"--model_name_or_path={tiny_model_dir}", f"--data_path={toy_data}", f"--output_dir={out}",
           "--max_steps=2", "--eval_steps=100", "--per_device_train_batch_size=2", "--gradient_accumulation_steps=1",
           "--max_seq_len=128", "--report_to=none", "--logging_steps=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_saved_config(out / "config.yaml")["processes"] == 2
    # one final adapter, plus the Trainer's end-of-training checkpoint: nothing written twice by the two ranks
    assert sorted(str(p.relative_to(out)) for p in out.rglob("adapter_model.safetensors")) == [
        "adapter_model.safetensors", "checkpoint-2/adapter_model.safetensors"]
    assert not (out / ".staging").exists()
    assert result.stdout.count("step 2/2 | loss") == 1  # one log line per step, from the main process only
    assert json.loads((out / "metrics.json").read_text())["summary"]["global_step"] == 2
