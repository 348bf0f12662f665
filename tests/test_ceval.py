"""C-Eval: data layouts and errors, the paper's prompt, answer extraction, statistics, and the benchmark on a tiny
model (prefix KV reuse == plain path, outputs, LoRA run resolution, --compare, test-split submission)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medqwen.configlib import resolve_config
from medqwen.exams.runner import (
    CHOICES,
    CevalDataError,
    Question,
    build_messages,
    build_prompt,
    expand_subjects,
    extract_answer,
    extract_cot_answer,
    load_questions,
    read_csv_split,
)
from medqwen.stats import bootstrap_ci, mcnemar_exact

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "benchmark" / "ceval-exam"
sys.path.insert(0, str(REPO / "benchmark"))

Q = Question("clinical_medicine", "val", "0", "下列哪项是X", ("甲", "乙", "丙", "丁"), "B")
SHOT = Question("clinical_medicine", "dev", "0", "题干一", ("a1", "b1", "c1", "d1"), "C", "1. 因为……\n2. 所以……")


# -- prompts -------------------------------------------------------------------------------------------------

def test_official_prompt_is_the_papers_template():
    # C-Eval paper, answer-only few-shot prompt: instruction, examples ending "答案：X\n\n", question, "答案：".
    expected = ("以下是中国关于临床医学考试的单项选择题，请选出其中的正确答案。\n\n"
                "题干一\nA. a1\nB. b1\nC. c1\nD. d1\n答案：C\n\n"
                "下列哪项是X\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：")
    assert build_prompt(Q, [SHOT], style="official") == expected
    assert build_prompt(Q, [], style="official") == expected.replace("题干一\nA. a1\nB. b1\nC. c1\nD. d1\n"
                                                                     "答案：C\n\n", "")


def test_lm_eval_style_and_cot_rendering():
    lm = build_prompt(Q, [SHOT], style="lm-eval")
    assert lm.startswith("以下是中国关于临床医学的单项选择题") and "答案： C\n\n下列哪项是X" in lm
    assert lm.endswith("答案：")
    cot = build_prompt(Q, [SHOT], style="official", cot=True)
    assert "答案：让我们一步一步思考，\n1. 因为……\n2. 所以……\n所以答案是C。\n\n" in cot
    assert cot.endswith("答案：让我们一步一步思考，\n1.")
    msgs = build_messages(Q, [SHOT])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and msgs[1]["content"] == "C"
    assert msgs[0]["content"].startswith("以下是中国关于临床医学考试") and not msgs[2]["content"].startswith("以下")


# -- data ----------------------------------------------------------------------------------------------------

def test_shipped_sample_reads_with_newlines_inside_quotes():
    dev = load_questions(DATA, "clinical_medicine", "dev")
    val = load_questions(DATA, "clinical_medicine", "val")
    test = load_questions(DATA, "clinical_medicine", "test")
    assert (len(dev), len(val), len(test)) == (5, 20, 10)
    assert all(q.explanation for q in dev) and all(q.answer in CHOICES for q in val)
    assert all(q.answer is None for q in test)
    assert any("\n" in q.question for q in val) and "\n" in dev[0].explanation
    assert expand_subjects(["medical", "clinical_medicine"])[:2] == ["clinical_medicine", "basic_medicine"]
    with pytest.raises(ValueError, match="unknown C-Eval subject"):
        expand_subjects(["cardiology"])


@pytest.mark.parametrize("body, message", [
    ("id,question,A,B,C,D\n0,q,a,b,c,d\n", "does not match the released layout"),
    ("id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n", "answer must be one of"),
    ("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,q,a,b,c\n", r"val\.csv:3: 5 fields"),
    ("id,question,A,B,C,D,answer\n0,,a,b,c,d,A\n", "empty or missing 'question'"),  # a blank option is graded
    ("", "empty file"),
])
def test_malformed_csv_gets_a_clear_error(tmp_path, body, message):
    path = tmp_path / "val.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(CevalDataError, match=message):
        read_csv_split(path, "clinical_medicine", "val")


def test_help_lists_every_flag():
    from medqwen.configlib import build_parser
    from medqwen.exams.config import CevalConfig
    from medqwen.perf.config import PerfCevalConfig

    assert "--prompt_style" in build_parser(CevalConfig).format_help()
    assert "--original_questions" in build_parser(PerfCevalConfig).format_help()


def test_missing_data_names_the_fix(tmp_path):
    with pytest.raises(CevalDataError, match="get_ceval.py"):
        load_questions(tmp_path, "clinical_medicine", "val")


def test_hf_datasets_layout_equals_csv(tmp_path):
    import datasets  # a pinned requirement: missing, the test fails rather than skips
    splits = {}
    for split in ("dev", "val", "test"):
        rows = [{"id": int(q.id), "question": q.question, **dict(zip(CHOICES, q.options)), "answer": q.answer or "",
                 "explanation": q.explanation or ""} for q in load_questions(DATA, "clinical_medicine", split)]
        splits[split] = datasets.Dataset.from_list(rows)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "clinical_medicine"))
    for split in ("dev", "val", "test"):
        assert load_questions(tmp_path, "clinical_medicine", split) == load_questions(DATA, "clinical_medicine", split)


# -- extraction and statistics -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("B", "B"), (" C. 心肌肌钙蛋白", "C"), ("答案：D", "D"), ("（A）", "A"), ("答案是 B", "B"),
    ("我认为正确答案为C，因为……", "C"), ("无法判断", None), ("<think>A还是B</think>D", "D"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_official_cot_extraction_rules():
    assert extract_cot_answer("1. 分析……\n所以答案是D。") == "D"
    assert extract_cot_answer("A不对，B也不对，C是正确的") == "C"
    assert extract_cot_answer("应当首先考虑乙", Q) == "B"  # the reply quotes exactly one option's text
    assert extract_cot_answer("A和B都有可能") is None


def test_mcnemar_exact_and_bootstrap():
    a = [1] * 10 + [0] * 10           # 1 item only A gets right, 9 only B
    b = [0] + [1] * 9 + [1] * 9 + [0]
    test = mcnemar_exact(a, b)
    assert (test["a_only"], test["b_only"]) == (1, 9)
    assert test["p_value"] == pytest.approx(2 * (1 + 10) / 2**10)  # exact two-sided binomial
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    low, high = bootstrap_ci([1, 0, 1, 1], n_boot=500, seed=0)
    assert 0 <= low <= 0.75 <= high <= 1 and bootstrap_ci([1, 0, 1, 1], 500, seed=0) == (low, high)


# -- scoring on the tiny model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    from medqwen.exams.backends import HFBackend

    return HFBackend.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", batch_size=4)


def test_prefix_reuse_gives_the_plain_paths_answers(tiny_backend, monkeypatch):
    """Questions packed after the cached five-shot head score exactly as each full prompt run alone, padded."""
    from medqwen.exams.runner import score_questions

    questions = load_questions(DATA, "clinical_medicine", "val")[:8]
    shots = load_questions(DATA, "clinical_medicine", "dev")
    tiny_backend.reuse_prefix = False
    plain = score_questions(tiny_backend, questions, shots)
    tiny_backend.reuse_prefix = True
    packed_rows = []
    packed = tiny_backend._packed_last_hidden
    monkeypatch.setattr(tiny_backend, "_packed_last_hidden", lambda s, h: packed_rows.append(len(s)) or packed(s, h))
    reused = score_questions(tiny_backend, questions, shots)
    assert packed_rows == [4, 4]  # the packed path really ran: 8 questions, batch 4
    lp = lambda preds: np.array([[p.logprobs[c] for c in CHOICES] for p in preds])  # noqa: E731
    np.testing.assert_allclose(lp(reused), lp(plain), atol=1e-5)
    assert [p.pred for p in reused] == [p.pred for p in plain]
    # The multi-token path (each option scored as its own sequence) agrees with the one-pass path.
    ids = [tiny_backend.tokenizer.encode(p.prompt) for p in plain[:2]]
    opt = [tiny_backend.tokenizer.encode(c, add_special_tokens=False)[0] for c in CHOICES]
    seq = tiny_backend.sequence_logprobs([i + [o] for i in ids for o in opt], [1] * 8).reshape(2, 4)
    np.testing.assert_allclose(seq, lp(plain)[:2], atol=1e-5)


def test_compiled_scoring_compiles_the_packed_layer_once_and_matches_eager(tiny_model_dir):
    """--compile: every layer of every subject's packed pass shares one compiled graph. Before, the forward passes
    filled a KV cache whose per-layer guard recompiled each layer until Dynamo's limit left everything eager."""
    import torch

    from medqwen.exams.backends import HFBackend

    torch._dynamo.reset()
    eager = HFBackend.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", batch_size=4)
    compiled = HFBackend.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", batch_size=4, compile=True)
    gen = np.random.default_rng(0)
    options = [1, 2, 3, 4]
    for _ in range(2):  # two subjects, each with its own head
        head = gen.integers(5, 500, 40).tolist()
        seqs = [head + gen.integers(5, 500, int(n)).tolist() for n in gen.integers(3, 20, 6)]
        np.testing.assert_allclose(compiled.next_token_logprobs(seqs, options),
                                   eager.next_token_logprobs(seqs, options), atol=1e-4)
    layer_forward = type(compiled.decoder.layers[0]).forward.__code__
    assert len(torch._dynamo.eval_frame._debug_get_cache_entry_list(layer_forward)) == 1
    torch._dynamo.reset()


def test_kernels_auto_means_liger_only_on_cuda_with_the_package(monkeypatch):
    import importlib.util

    import torch

    from medqwen.exams.backends import resolve_kernels

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    real_find_spec = importlib.util.find_spec
    installed = lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", installed)
    assert resolve_kernels("auto", cuda) == "liger"
    assert resolve_kernels("auto", cuda, compile=True) == "none"  # Inductor fuses them; Liger would break graphs
    assert resolve_kernels("auto", cpu) == "none" and resolve_kernels("none", cuda) == "none"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel"
                        else real_find_spec(name, *a))
    assert resolve_kernels("auto", cuda) == "none"
    with pytest.raises(ImportError, match="pip install liger-kernel"):
        resolve_kernels("liger", cuda)
    with pytest.raises(ValueError, match="auto, liger, none"):
        resolve_kernels("triton", cpu)


def test_generate_scoring_records_raw_output(tiny_backend):
    from medqwen.exams.runner import score_questions

    questions = load_questions(DATA, "clinical_medicine", "val")[:2]
    preds = score_questions(tiny_backend, questions, [], scoring="generate", chat=True, max_new_tokens=3)
    assert all(isinstance(p.output, str) and p.logprobs is None for p in preds)
    assert all(p.pred in (*CHOICES, None) for p in preds)
    shots = load_questions(DATA, "clinical_medicine", "dev")[:1]
    cot = score_questions(tiny_backend, questions[:1], shots, scoring="generate", cot=True, max_new_tokens=3)
    assert cot[0].prompt.endswith("答案：让我们一步一步思考，\n1.") and "所以答案是" in cot[0].prompt
    with pytest.raises(ValueError, match="CoT needs --scoring generate"):
        score_questions(tiny_backend, questions, [], cot=True)


def test_openai_backend_down_gives_clear_error():
    from medqwen.exams.backends import OpenAIBackend

    with pytest.raises(ConnectionError, match="cannot reach"):
        OpenAIBackend("http://127.0.0.1:8397/v1", timeout_s=2)


# -- the script: base, LoRA run, compare, test split ---------------------------------------------------------

def make_lora_run(base_dir: Path, run_dir: Path) -> Path:
    """A trainer-like run folder: a random (non-zero) LoRA adapter and config.yaml naming the base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(run_dir)
    (run_dir / "config.yaml").write_text(f"model_name_or_path: {base_dir}\n", encoding="utf-8")
    return run_dir


def test_benchmark_script_lora_compare_and_submission(tiny_model_dir, tmp_path, capsys):
    import benchmark_ceval

    from medqwen.exams.config import CevalConfig
    from medqwen.runs import RunNotFoundError

    common = {"model": str(tiny_model_dir), "k_shot": 2, "limit": 6, "device": "cpu", "n_bootstrap": 200,
              "subjects": ["clinical_medicine", "basic_medicine"]}
    base = benchmark_ceval.main(resolve_config(CevalConfig, {**common, "output_dir": str(tmp_path / "base")}))
    assert base["n"] == 12 and 0 <= base["accuracy"] <= 1 and len(base["ci95"]) == 2
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert set(metrics["detail"]) == {"clinical_medicine", "basic_medicine"} and metrics["meta"]["git_hash"]
    rows = [json.loads(line) for line in (tmp_path / "base" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) >= {"id", "prompt", "logprobs", "output", "pred", "gold", "correct"}
    assert f"resolved_model: {tiny_model_dir}" in (tmp_path / "base" / "config.yaml").read_text()

    with pytest.raises(RunNotFoundError, match="no LoRA adapter"):
        benchmark_ceval.main(resolve_config(CevalConfig, {"model_type": "lora", "run_dir": str(tmp_path)}))
    run = make_lora_run(tiny_model_dir, tmp_path / "lora-run")
    cfg = resolve_config(CevalConfig, {**common, "model": None, "model_type": "lora", "run_dir": str(run),
                                       "output_dir": str(tmp_path / "lora")})  # the base: from the run's config
    lora = benchmark_ceval.main(cfg)
    assert lora["adapter"] == str(run) and lora["n"] == 12

    capsys.readouterr()
    result = benchmark_ceval.main(resolve_config(CevalConfig, {
        "compare": [str(tmp_path / "base"), str(tmp_path / "lora")], "output_dir": str(tmp_path / "cmp")}))
    out = capsys.readouterr().out
    assert "McNemar p" in out and "| base |" in out and "| lora |" in out
    assert result["n_shared"] == 12 and (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    lora_acc = np.mean([json.loads(x)["correct"] for x in (tmp_path / "lora" / "predictions.jsonl").open()])
    assert result["runs"][1]["accuracy"] == pytest.approx(lora_acc)

    test = benchmark_ceval.main(resolve_config(CevalConfig, {**common, "split": "test",
                                                             "output_dir": str(tmp_path / "test")}))
    submission = json.loads((tmp_path / "test" / "submission.json").read_text())
    assert set(submission) == {"clinical_medicine", "basic_medicine"}
    assert set(submission["basic_medicine"]) == {"0", "1", "2", "3"} and "accuracy" not in test
    assert set(submission["clinical_medicine"].values()) <= set(CHOICES)


def test_perf_ceval_tiny_smoke(tmp_path):
    import perf_ceval

    from medqwen.perf.config import PerfCevalConfig

    summary = perf_ceval.main(resolve_config(PerfCevalConfig, {"tiny": True, "questions": 8, "subjects": 2,
                                                              "mean_tokens": 300, "head_tokens": 200,
                                                              "profile": True, "output_dir": str(tmp_path)}))
    assert summary["reuse_same_answers"] == 1.0 and summary["reuse_max_abs_logprob_diff"] < 1e-4
    assert summary["plain_seconds"] > 0 and summary["original_seconds"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "questions/s" in table and "| reuse | none |" in table  # kernels column: auto is none on CPU
    assert (tmp_path / "profile_reuse.txt").read_text().startswith("profiled subject:")
    assert set(np.load(tmp_path / "logprobs.npz")) == {"plain", "reuse"}


def test_get_ceval_from_zip_and_offline_hub(tmp_path, capsys):
    import zipfile

    sys.path.insert(0, str(REPO / "data"))
    import get_ceval

    with zipfile.ZipFile(tmp_path / "ceval-exam.zip", "w") as zf:  # the official zip's layout: <split>/<file>
        for split in ("dev", "val", "test"):
            zf.write(DATA / split / f"basic_medicine_{split}.csv", f"{split}/basic_medicine_{split}.csv")
    out = tmp_path / "ceval-exam"
    assert get_ceval.main(["--zip", str(tmp_path / "ceval-exam.zip"), "--subjects", "basic_medicine",
                           "--output_dir", str(out)]) == 0
    assert load_questions(out, "basic_medicine", "val") == load_questions(DATA, "basic_medicine", "val")
    with pytest.raises(FileNotFoundError, match="clinical_medicine_dev.csv"):
        get_ceval.main(["--zip", str(tmp_path / "ceval-exam.zip"), "--subjects", "clinical_medicine",
                        "--output_dir", str(out)])
    with pytest.raises(SystemExit) as ended:  # no hub here (HF_HUB_OFFLINE=1): say what to do
        get_ceval.main(["--subjects", "clinical_medicine", "--output_dir", str(tmp_path / "hub")])
    assert ended.value.code == 2 and "ceval-exam.zip" in capsys.readouterr().err
