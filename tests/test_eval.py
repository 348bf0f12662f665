"""Open-ended evaluation: metric math on hand-made strings, loss/generation mechanics and the scripts end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medqwen.configlib import UserError, spread_values
from medqwen.evaluate.config import EvalConfig
from medqwen.evaluate.metrics import corpus_bleu, names_assistant, rouge_l, sentence_bleu, zh_tokens
from medqwen.evaluate.run import EvalDataError, cli, load_heldout, run_eval

REPO = Path(__file__).resolve().parent.parent

# Team-written conversations for mechanics tests (content is illustrative, not medical advice).
CONVERSATIONS = [
    [{"role": "system", "content": "你是一名谨慎的医学助手。"},
     {"role": "user", "content": f"我头痛已经{i}天了，需要去医院吗？"},
     {"role": "assistant", "content": f"头痛持续{i}天，建议先测量血压；如伴有呕吐或视物模糊，请尽快就医。"}]
    for i in range(1, 13)
] + [
    [{"role": "user", "content": "What helps a mild sore throat?"},
     {"role": "assistant", "content": "Warm fluids and rest; see a doctor if it lasts over a week."},
     {"role": "user", "content": "And if I also have a high fever?"},
     {"role": "assistant", "content": "A high fever with a sore throat needs a doctor's visit."}],
]


def write_jsonl(path: Path, conversations) -> Path:
    path.write_text("".join(json.dumps({"conversations": c}, ensure_ascii=False) + "\n" for c in conversations),
                    encoding="utf-8")
    return path


# ---- metric math on hand-made strings --------------------------------------------------------------------


def test_zh_tokens_split_chinese_by_character_and_keep_latin_words():
    assert zh_tokens("头痛3天, hello world") == ["头", "痛", "3", "天", ",", "hello", "world"]


def test_rouge_l_char_level_known_values():
    # LCS("今天我很好", "我今天很好") = "今天很好": P = R = 4/5, F1 = 0.8
    assert rouge_l("今天我很好", "我今天很好") == pytest.approx(0.8)
    # prediction 2 chars all matching, reference 4 chars: P = 1, R = 0.5, F1 = 2/3
    assert rouge_l("头痛", "头痛发热") == pytest.approx(2 / 3)
    assert rouge_l("咳嗽", "头痛") == 0.0
    assert rouge_l("头痛", "头痛") == pytest.approx(1.0)
    # why not rouge-score's default tokenizer: it deletes every Chinese character
    from rouge_score import rouge_scorer

    assert rouge_scorer.RougeScorer(["rougeL"]).score("我今天很好", "今天我很好")["rougeL"].fmeasure == 0.0


def test_bleu_char_level_known_values():
    # all n-gram precisions 1 (4/4, 3/3, 2/2, 1/1); brevity penalty exp(1 - 5/4)
    assert sentence_bleu("今天很好", "我今天很好") == pytest.approx(100 * math.exp(1 - 5 / 4), abs=1e-6)
    # equal length: precisions 4/5, 3/4, 2/3, 1/2 -> geometric mean (0.2) ** 0.25
    assert corpus_bleu(["我今天很累"], ["我今天很好"]) == pytest.approx(100 * 0.2 ** 0.25, abs=1e-6)
    # corpus BLEU pools counts: the two sentences above together
    pooled = (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25 * math.exp(1 - 10 / 9)  # 9 hypothesis vs 10 reference chars
    assert (corpus_bleu(["今天很好", "我今天很累"], ["我今天很好", "我今天很好"])
            == pytest.approx(100 * pooled, abs=1e-6))


def test_names_assistant_ignores_case_and_spaces():
    assert names_assistant("您好，我是 MedQwen，一名医学助手。", "MedQwen")
    assert names_assistant("I am medqwen.", "MedQwen")
    assert names_assistant("I'm Med Qwen!", "MedQwen")
    assert not names_assistant("I am Qwen, made by Alibaba.", "MedQwen")
    assert not names_assistant("anything", "")


def test_compare_flag_takes_several_folders():
    argv = ["--compare", "out/eval/base", "out/eval/lora", "--limit", "3", "--compare", "c"]
    assert spread_values(argv) == ["--compare", "out/eval/base", "--compare", "out/eval/lora", "--limit", "3",
                                   "--compare", "c"]


# ---- data selection -------------------------------------------------------------------------------------


def test_heldout_uses_the_trainers_saved_split_else_the_same_seeded_split(tmp_path):
    from medqwen.data.conversations import split_conversations

    def messages(rows):  # the trainer's reader returns records {"conversations": [...], "tools"?: [...]}
        return [r["conversations"] if isinstance(r, dict) else r for r in rows]

    data = write_jsonl(tmp_path / "all.jsonl", CONVERSATIONS)
    cfg = EvalConfig(data_path=str(data), split_run=str(tmp_path / "run"))
    heldout, source = load_heldout(cfg)
    expected = messages(split_conversations(CONVERSATIONS, 0.1, 42)[1])
    assert messages(heldout) == expected and len(expected) == 1 and "not found" in source

    (tmp_path / "run" / "split").mkdir(parents=True)
    write_jsonl(tmp_path / "run" / "split" / "eval.jsonl", CONVERSATIONS[:3])
    heldout, source = load_heldout(cfg)
    assert messages(heldout) == CONVERSATIONS[:3] and "saved by the trainer" in source


def test_missing_and_malformed_data_give_clear_errors(tmp_path):
    with pytest.raises(EvalDataError, match="no held-out data.*missing.jsonl"):
        load_heldout(EvalConfig(data_path=str(tmp_path / "missing.jsonl"), split_run=None))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"conversations": CONVERSATIONS[0]}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_heldout(EvalConfig(data_path=str(bad), split_run=None))


# ---- model mechanics on the tiny random Qwen3 ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from medqwen.chat import load_tokenizer
    from medqwen.modeling import load_model

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def test_reference_loss_counts_assistant_tokens_only_and_ignores_padding(tiny):
    import torch

    from medqwen.chat import encode_with_assistant_mask
    from medqwen.evaluate.run import reference_loss

    model, tokenizer = tiny
    convs = [CONVERSATIONS[0], CONVERSATIONS[-1], CONVERSATIONS[5]]
    batched = reference_loss(model, tokenizer, convs, max_seq_len=1024, batch_size=3)
    for conv, (nll, n) in zip(convs, batched):
        ids, mask = encode_with_assistant_mask(tokenizer, conv)
        labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
        with torch.no_grad():  # transformers' own shifted, masked mean loss
            hf_loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        assert n == sum(mask[1:]) and 0 < n < len(ids)
        assert nll / n == pytest.approx(hf_loss, rel=1e-4)


def test_batched_greedy_generation_equals_one_at_a_time(tiny):
    from medqwen.evaluate.run import generate_hf
    from medqwen.modeling import random_qwen3

    _, tokenizer = tiny
    # Larger random weights than the fixture's: its replies are all newlines, which would hide padding bugs.
    model = random_qwen3("tiny", vocab_size=len(tokenizer), initializer_range=0.3).eval()
    prompts = [c[:-1] for c in (CONVERSATIONS[0], CONVERSATIONS[-1], CONVERSATIONS[7])]
    batched = generate_hf(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate_hf(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single and any(batched)


# ---- end to end ------------------------------------------------------------------------------------------


def make_lora_run(run_dir: Path, base_dir: Path, data: Path) -> Path:
    """A trainer-run-like folder: adapter + config.yaml naming the base model + split/eval.jsonl."""
    from peft import LoraConfig, get_peft_model

    from medqwen.modeling import load_model

    model = get_peft_model(load_model(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=False))
    model.save_pretrained(run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": str(base_dir),
                                                         "data_path": str(data)}), encoding="utf-8")
    (run_dir / "split").mkdir()
    write_jsonl(run_dir / "split" / "eval.jsonl", CONVERSATIONS[:4])
    return run_dir


def test_base_and_lora_end_to_end_then_compare(tiny_model_dir, tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "all.jsonl", CONVERSATIONS)
    run = make_lora_run(tmp_path / "lora-run", tiny_model_dir, data)
    common = ["--split_run", str(run), "--limit", "3", "--max_new_tokens", "5", "--batch_size", "2"]

    base_cfg = EvalConfig(model=str(tiny_model_dir), split_run=str(run), limit=3, max_new_tokens=5,
                          batch_size=2, output_dir=str(tmp_path / "eval" / "base"))
    summary = run_eval(base_cfg)
    table = capsys.readouterr().out
    assert "| reference loss (nats/token) |" in table and "| identity rate |" in table

    # The real script, with its own defaults: the base model comes from the run's saved config.yaml.
    out = subprocess.run([sys.executable, "eval/eval_lora.py", "--adapter", str(run), *common,
                          "--output_dir", str(tmp_path / "eval" / "lora")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lora_dir = tmp_path / "eval" / "lora"
    saved = yaml.safe_load((lora_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["name"] == "lora" and saved["model"] is None
    assert saved["resolved_base_model"] == str(tiny_model_dir)

    for folder in (tmp_path / "eval" / "base", lora_dir):
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["summary"]["n"] == 3 and metrics["summary"]["identity_n"] == 10
        assert metrics["meta"]["packages"]["transformers"] and "git_hash" in metrics["meta"]
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["kind"] for r in rows].count("heldout") == 3 and len(rows) == 13
        assert {r["question"] for r in rows if r["kind"] == "heldout"} <= {c[1]["content"] for c in CONVERSATIONS[:4]}
        assert (folder / "report.md").is_file() and "<table>" in (folder / "report.html").read_text(encoding="utf-8")
    lora = json.loads((lora_dir / "metrics.json").read_text(encoding="utf-8"))["summary"]
    assert lora["ref_loss"] != pytest.approx(summary["ref_loss"], rel=1e-6)  # the adapter changed the model

    monkeypatch.setattr(sys, "argv", ["eval_base.py", "--compare", str(tmp_path / "eval" / "base"), str(lora_dir),
                                      "--report_samples", "2", "--output_dir", str(tmp_path / "cmp")])
    with pytest.raises(SystemExit) as ended:
        cli("base")  # what the scripts run; `--compare A B` takes several folders
    assert ended.value.code == 0
    captured = capsys.readouterr()
    table = captured.out
    assert captured.err.startswith("eval_base config:\n") and "model_type: base" in captured.err
    assert table.splitlines()[0] == "| metric | base | lora |"
    assert "| Δ loss/token vs base | - | " in table and "| identity vs base: McNemar p | - | " in table
    report = (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    assert report.count("**base**") == report.count("**lora**") == 2 + 10  # 2 sampled answers + every probe
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


def test_script_errors_name_what_is_missing(tiny_model_dir, tmp_path):
    from medqwen.evaluate.run import main

    cases = [
        (EvalConfig(model=str(tmp_path / "no-model"), split_run=None), "no-model' does not exist"),
        (EvalConfig(model=None, adapter=str(tmp_path / "no-adapter")), "adapter folder .*no-adapter.* does not exist"),
        (EvalConfig(model=str(tiny_model_dir), split_run=None, data_path=str(tmp_path / "x.jsonl")),
         "x.jsonl does not exist"),
    ]
    for cfg, message in cases:
        with pytest.raises(UserError, match=message):
            main(cfg)
