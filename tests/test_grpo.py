"""GRPO on multiple-choice questions: rewards, MCQ reading/conversion, shipped data, and a tiny model that trains."""

import json
import re
from pathlib import Path

import pytest
import yaml

from medqwen.configlib import parse_config
from medqwen.exams.runner import Question, load_questions, render_prompt
from medqwen.train.config import GrpoConfig, McqConvertConfig
from medqwen.train.grpo import answer_format_score, correct_reward, format_reward, grpo_args, mcq_dataset
from medqwen.train.mcq import McqDataError, read_mcq_file

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "grpo_mcq_sample.jsonl"
BENCHMARK = REPO / "data" / "benchmark" / "ceval-exam"

Q = Question("arithmetic", "train", "t1", "What is 11 + 5?", ("16", "14", "17", "13"), "A")


def load_script(path: str):
    """A repository script (not a package module) imported by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def rewards(replies, q=Q):
    n = len(replies)
    correct = correct_reward(replies, answer=[q.answer] * n, options=[list(q.options)] * n,
                             question=[q.question] * n, subject=[q.subject] * n, question_id=[q.id] * n)
    return correct, format_reward(replies)


# ----------------------------------------------------------------------------------------------------------
# Rewards: what the benchmark's parser reads, and the answer format


@pytest.mark.parametrize("reply, correct, fmt", [
    ("A", 1.0, 1.0),
    ("A. 16", 1.0, 1.0),
    ("答案：A", 1.0, 1.0),
    ("（A）", 1.0, 1.0),
    ("B", 0.0, 1.0),                       # well formed, wrong
    ("所以答案是A。", 1.0, 0.5),             # the fallback rules find it
    ("11 + 5 = 16", 1.0, 0.0),              # the parser matches the option text; no letter at all
    ("I am not sure.", 0.0, 0.0),
    ("<think>11+5=16</think>A", 1.0, 1.0),  # hybrid models think first, as extract_answer allows
    ([{"role": "assistant", "content": "A"}], 1.0, 1.0),  # conversational completions
])
def test_rewards_follow_the_benchmark_parser(reply, correct, fmt):
    assert rewards([reply]) == ([correct], [fmt])


def test_answer_format_score_range():
    assert answer_format_score("D because") == 1.0 and answer_format_score("") == 0.0


# ----------------------------------------------------------------------------------------------------------
# Prompts: the benchmark's own zero-shot chat prompt


def test_prompts_are_the_benchmarks(tiny_model_dir, tmp_path):
    from medqwen.chat import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    csv_path = BENCHMARK / "val" / "clinical_medicine_val.csv"
    ours = read_mcq_file(csv_path)  # the subject comes from the file name, as the benchmark's does
    theirs = load_questions(BENCHMARK, "clinical_medicine", "val")
    rows = mcq_dataset(ours[:3], tokenizer, "official")
    for row, q in zip(rows, theirs):
        assert row["prompt"] == render_prompt(q, (), "official", False, tokenizer, chat=True)
        assert row["answer"] == q.answer and row["prompt"].endswith("答案：<|im_end|>\n<|im_start|>assistant\n")
        assert "临床医学" in row["prompt"]


# ----------------------------------------------------------------------------------------------------------
# Reading and converting MCQ files


def test_read_jsonl_forms_and_errors(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"question": "1+1=?", "options": ["1", "2", "3", "4"], "answer": "b", "subject": "arithmetic"},
        {"question": "2+2=?", "options": {"A": "4", "B": "5", "C": "6", "D": "7"}, "answer": "A"},
        {"question": "3+3=?", "A": "5", "B": "7", "C": "6", "D": "8", "answer": "C", "id": "x9"},
    ]) + "\n\n", encoding="utf-8")
    qs = read_mcq_file(good)
    assert [q.answer for q in qs] == ["B", "A", "C"] and qs[1].options == ("4", "5", "6", "7")
    assert [q.subject for q in qs] == ["arithmetic", "q", "q"] and qs[2].id == "x9" and qs[0].id == "q-1"

    for line, message in [("{not json", "invalid JSON"),
                          ('{"question": "x", "options": ["1"], "answer": "A"}', "2 to 8 options"),
                          ('{"question": "x", "options": ["1", "2", "3", "4"], "answer": "E"}', "A/B/C/D"),
                          ('{"options": ["1", "2", "3", "4"], "answer": "A"}', "'question'")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(good.read_text(encoding="utf-8").splitlines()[0] + "\n" + line + "\n", encoding="utf-8")
        with pytest.raises(McqDataError, match=rf"bad.jsonl:2: .*{re.escape(message)}"):
            read_mcq_file(bad)
    with pytest.raises(FileNotFoundError, match="convert_mcq.py"):
        read_mcq_file(tmp_path / "missing.jsonl")


def test_read_csv_layouts(tmp_path):
    ceval = tmp_path / "nursing_val.csv"
    ceval.write_text('id,question,A,B,C,D,answer\n0,"line one\nline two",a,b,c,d,D\n', encoding="utf-8")
    (q,) = read_mcq_file(ceval)
    assert (q.subject, q.question, q.answer) == ("nursing", "line one\nline two", "D")

    cmmlu = tmp_path / "clinical_knowledge.csv"
    cmmlu.write_text(",Question,A,B,C,D,Answer\n0,问题一,甲,乙,丙,丁,B\n1,问题二,甲,乙,丙,丁,A\n", encoding="utf-8")
    assert [(q.subject, q.id, q.answer) for q in read_mcq_file(cmmlu)] == [
        ("clinical_knowledge", "0", "B"), ("clinical_knowledge", "1", "A")]

    test_split = tmp_path / "nursing_test.csv"
    test_split.write_text("id,question,A,B,C,D\n0,q,a,b,c,d\n", encoding="utf-8")
    with pytest.raises(McqDataError, match="no 'answer' column"):
        read_mcq_file(test_split)
    other = tmp_path / "other.csv"
    other.write_text("q,opt1,opt2\n", encoding="utf-8")
    with pytest.raises(McqDataError, match="neither C-Eval"):
        read_mcq_file(other)


def test_convert_mcq_round_trip(tmp_path, capsys):
    convert = load_script("data/convert_mcq.py")
    out = tmp_path / "out.jsonl"
    cfg = parse_config(McqConvertConfig, ["--input", str(BENCHMARK / "dev" / "clinical_medicine_dev.csv"),
                                          "--input", str(SAMPLE), "--output", str(out)], environ={})
    questions = convert.main(cfg)
    again = read_mcq_file(out)
    assert [(q.id, q.subject, q.question, q.options, q.answer) for q in again] == \
           [(q.id, q.subject, q.question, q.options, q.answer) for q in questions]
    printed = capsys.readouterr().out
    assert "| arithmetic | 64 | 16 | 16 | 16 | 16 |" in printed and f"| **all** | {len(again)} |" in printed
    assert len(again) == 5 + len(read_mcq_file(SAMPLE))


# ----------------------------------------------------------------------------------------------------------
# The shipped questions


def test_shipped_questions_are_valid_and_correct():
    questions = read_mcq_file(SAMPLE)
    arithmetic = [q for q in questions if q.subject == "arithmetic"]
    medical = [q for q in questions if q.subject != "arithmetic"]
    assert len(arithmetic) >= 40 and len(medical) >= 40
    assert len({q.id for q in questions}) == len(questions)
    for q in arithmetic:  # recompute every answer (no eval: parse "What is a op b?")
        a, op, b = re.fullmatch(r"What is (\d+) ([+\-×]) (\d+)\?", q.question).groups()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[op]
        assert q.options[ord(q.answer) - ord("A")] == str(value), q.id
        assert [o for o in q.options].count(str(value)) == 1, q.id
    for q in questions:
        assert len(set(q.options)) == 4, q.id
    for group in (arithmetic, medical):  # no position bias to learn
        counts = [sum(q.answer == c for q in group) for c in "ABCD"]
        assert max(counts) - min(counts) <= 1, counts


def test_shipped_questions_are_not_benchmark_questions():
    bench = set()
    for subject in ("clinical_medicine", "basic_medicine"):
        for split in ("dev", "val", "test"):
            bench |= {re.sub(r"\s", "", q.question) for q in load_questions(BENCHMARK, subject, split)}
    overlap = [q.id for q in read_mcq_file(SAMPLE) if re.sub(r"\s", "", q.question) in bench]
    assert not overlap, f"training questions also in the benchmark sample: {overlap}"


# ----------------------------------------------------------------------------------------------------------
# Config and the trainer


def test_config_flags_and_cpu_args():
    cfg = parse_config(GrpoConfig, ["--num-generations", "4", "--beta", "0", "--max_completion_length", "32",
                                    "--temperature", "0.7", "--use_vllm"], environ={})
    assert (cfg.num_generations, cfg.beta, cfg.max_completion_length, cfg.temperature, cfg.use_vllm) == \
           (4, 0.0, 32, 0.7, True)
    args = grpo_args(GrpoConfig())
    assert args.num_generations == 8 and args.reward_weights == [1.0, 0.2]
    assert args.bf16 is False and args.gradient_checkpointing is False  # CPU: both off (TRL defaults both on)


def test_rollout_engine_choice():
    from medqwen.train.rollouts import choose_rollouts

    assert choose_rollouts("auto", use_vllm=False, cuda=True)[0] == "graph"
    assert choose_rollouts("auto", use_vllm=False, cuda=False)[0] == "plain"
    assert choose_rollouts("compiled", use_vllm=True, cuda=True)[0] == "vllm"
    assert choose_rollouts("plain", use_vllm=False, cuda=True) == ("plain", "--rollouts plain")
    with pytest.raises(ValueError, match="unknown rollouts"):
        choose_rollouts("fast", use_vllm=False, cuda=True)


def test_compiled_rollouts_sample_what_trls_default_samples(tiny_model_dir, tmp_path):
    """The static cache and the prompt bucket change how rollouts are computed, not what is sampled: with the same
    seed both paths draw the same completions (fp32 on CPU, where transformers does not compile the decode step).
    LoRA dropout is off here: TRL generates in training mode, and dropout over the longer bucketed prompts draws
    more random numbers, which would shift the sampler's stream (the same distribution, other draws)."""
    import torch
    from transformers import AutoModelForCausalLM

    from medqwen.chat import load_tokenizer
    from medqwen.train.grpo import build_grpo_trainer
    from medqwen.train.rollouts import PROMPT_BUCKET

    tokenizer = load_tokenizer(tiny_model_dir)
    questions = read_mcq_file(SAMPLE)[:3]
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"]
               for p in mcq_dataset(questions, tokenizer)["prompt"]]
    prompts = [ids for ids in prompts for _ in range(2)]  # a group of 2 per prompt, as TRL's sampler repeats them
    assert len({len(p) for p in prompts}) > 1 and all(len(p) % PROMPT_BUCKET for p in prompts)
    completions = {}
    for rollouts in ("plain", "compiled", "graph"):
        cfg = GrpoConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / rollouts), rollouts=rollouts,
                         num_generations=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                         max_completion_length=12, report_to="none", max_steps=1, data_path=str(SAMPLE),
                         lora_dropout=0.0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        trainer = build_grpo_trainer(cfg, mcq_dataset(questions, tokenizer), model=model, tokenizer=tokenizer)
        assert type(trainer).__mro__[1].__name__ == {"compiled": "CompiledRolloutTrainer",
                                                     "graph": "GraphRolloutTrainer"}.get(rollouts, "GRPOTrainer")
        torch.manual_seed(0)
        completions[rollouts], _ = trainer._generate_single_turn(prompts, None, {}, 2)
        assert trainer.pad_to_multiple_of is None  # the bucket is for generation only: the loss passes are unpadded
    assert completions["compiled"] == completions["plain"] == completions["graph"]
    assert all(len(c) == 12 for c in completions["plain"])  # a random model never stops early


def run_train(argv):
    return load_script("trainer/train_grpo.py").main(parse_config(GrpoConfig, argv, environ={}))


def test_tiny_model_trains_two_steps_and_saves_like_sft(tiny_model_dir, tmp_path):
    from medqwen.modeling import load_model
    from medqwen.runs import ModelChoice, resolve_model

    out = tmp_path / "grpo"
    common = ["--data_path", str(SAMPLE), "--subjects", "arithmetic", "--max_questions", "8",
              "--num_generations", "2", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
              "--max_completion_length", "8", "--learning_rate", "1e-3", "--save_steps", "1000"]
    summary = run_train(["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
                         "--beta", "0", *common])
    assert summary["global_step"] == 2 and summary["completions"] == 8
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "config.yaml", "metrics.json", "reward_curve.png"):
        assert (out / name).is_file(), name
    assert list((out / "logs").glob("events.out.tfevents.*")), "no TensorBoard events in <output_dir>/logs"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in metrics["detail"]["rewards"]] == [1, 2]
    assert metrics["meta"]["base_model"] == str(tiny_model_dir) and metrics["meta"]["git_hash"]
    # eval_grpo.py / benchmark_ceval.py --model-type grpo read the base model from the run's config.yaml
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == str(tiny_model_dir) and saved["questions"] == 8
    assert resolve_model(adapter=str(out), model_type="grpo") == ModelChoice(str(tiny_model_dir), str(out))
    load_model(tiny_model_dir, adapter=out)

    # continue from that adapter (as from an SFT run) with a KL term: TRL's frozen "ref" copy is not saved
    again = tmp_path / "grpo2"
    summary = run_train(["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(again),
                         "--init_adapter", str(out), "--max_steps", "1", "--beta", "0.04", *common])
    assert summary["global_step"] == 1
    assert "kl" in json.loads((again / "metrics.json").read_text())["detail"]["rewards"][0]
    assert (again / "adapter_model.safetensors").is_file() and not (again / "ref").exists()
    assert json.loads((again / "adapter_config.json").read_text())["r"] == 8


def test_checkpoints_are_moved_into_place_whole(tiny_model_dir, tmp_path):
    """GRPO checkpoints go through the SFT trainer's staging folder: each one that exists is complete."""
    from medqwen.modeling import load_model

    out = tmp_path / "grpo"
    run_train(["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
               "--data_path", str(SAMPLE), "--subjects", "arithmetic", "--max_questions", "4", "--num_generations",
               "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
               "--max_completion_length", "4", "--save_steps", "1", "--beta", "0"])
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] == "checkpoint-2"
    assert not (out / ".staging").exists()
    for name in checkpoints:
        assert (out / name / "trainer_state.json").is_file()
        load_model(tiny_model_dir, adapter=out / name)


def test_kill_after_checkpoint_then_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    """SIGKILL a GRPO run once a checkpoint exists, resume it: same final step and adapter as a run never stopped.

    Tolerance: atol 1e-5, rtol 1e-4 on every LoRA tensor (fp32 on CPU; the resumed run restores the optimizer,
    scheduler and RNG states, so the rollouts are sampled from the same generator state).
    """
    import torch
    from safetensors.torch import load_file

    from tests.kill import kill_after_first_checkpoint

    steps = 4
    common = ["--model", str(tiny_model_dir), "--data_path", str(SAMPLE), "--subjects", "arithmetic",
              "--max_questions", "8", "--num_generations", "2", "--per_device_train_batch_size", "4",
              "--gradient_accumulation_steps", "1", "--max_completion_length", "6", "--learning_rate", "1e-2",
              "--temperature", "1.0", "--save_steps", "2", "--save_total_limit", "10", "--max_steps", str(steps),
              "--beta", "0.04", "--report_to", "none"]
    reference = run_train([*common, "--output_dir", str(tmp_path / "ref")])

    out = tmp_path / "killed"
    killed_at = kill_after_first_checkpoint("trainer/train_grpo.py", [*common, "--output_dir", str(out)], out)
    assert 0 < killed_at < steps

    resumed = run_train([*common, "--output_dir", str(out), "--resume_from_checkpoint", "true"])
    assert resumed["resumed_from"].endswith(f"checkpoint-{killed_at}")
    assert resumed["global_step"] == reference["global_step"] == steps
    a = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    start = load_file(out / f"checkpoint-{killed_at}" / "adapter_model.safetensors")
    assert any(not torch.equal(a[name], start[name]) for name in a)  # training moved the adapter after the kill
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


def test_init_adapter_must_be_an_adapter(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        run_train(["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "x"),
                   "--init_adapter", str(tmp_path), "--data_path", str(SAMPLE), "--max_steps", "1"])


# ----------------------------------------------------------------------------------------------------------
# Behaviour: the bundled SmolLM2 on easy English arithmetic questions


@pytest.mark.slow
def test_smollm2_mean_reward_rises(bundled_model_dir, tmp_path):
    """4 GRPO steps (8 completions each) on the CPU demo settings at learning rate 3e-3; the curve is printed.

    Measured before writing the thresholds (same settings, seed 42, 2-core CPU, ~38 s/step):
    reward 0.175 0.175 0.150 0.425, format 0.250 0.250 0.750 0.875, correct 0.125 0.125 0.000 0.250:
    the model learns to open its reply with the option letter; 32 samples say little about correctness.
    """
    from medqwen.configlib import REPO_ROOT, resolve_config
    from medqwen.train.config import GrpoConfig
    from medqwen.train.grpo import train_grpo

    cfg = resolve_config(GrpoConfig, cli={"config": str(REPO_ROOT / "configs/smollm2/grpo_cpu_demo.yaml"),
                                          "model": str(bundled_model_dir), "max_steps": "4",
                                          "learning_rate": "3e-3", "output_dir": str(tmp_path / "grpo"),
                                          "report_to": "none"})
    summary = train_grpo(cfg)
    rows = json.loads((tmp_path / "grpo" / "metrics.json").read_text())["detail"]["rewards"]
    print("\nstep | reward | correct | format")
    for r in rows:
        print(f"{r['step']:>4} | {r['reward']:.3f} | {r['correct']:.3f} | {r['format']:.3f}")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    first, last = rows[:2], rows[-2:]
    mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
    # measured: format 0.250 -> 0.813 (+0.56), reward 0.175 -> 0.288 (+0.11); thresholds keep about half of that
    assert mean(last, "format") - mean(first, "format") >= 0.3
    assert mean(last, "reward") - mean(first, "reward") >= 0.05
    assert summary["reward_last"] > summary["reward_first"]
