"""CMMLU and CMExam beside C-Eval: published layouts and their errors, each exam's prompt, multi-answer items,
the option-order check (rotations on the tiny model), the pooled medical run and the forgetting check."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medqwen.configlib import resolve_config
from medqwen.exams import expand_subjects, get_exam
from medqwen.exams.base import ExamDataError, Skipped
from medqwen.exams.cmexam import read_cmexam_csv
from medqwen.exams.cmmlu import read_cmmlu_csv
from medqwen.exams.config import CevalConfig
from medqwen.exams.runner import (
    Prediction,
    Question,
    build_prompt,
    extract_answer,
    extract_answers,
    option_order_report,
    rotate,
    run_benchmark,
    score_questions,
)
from medqwen.stats import paired_bootstrap_diff_ci

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "benchmark"
DIRS = {"ceval": DATA / "ceval-exam", "cmmlu": DATA / "cmmlu", "cmexam": DATA / "cmexam"}
sys.path.insert(0, str(REPO / "benchmark"))


# -- prompts -------------------------------------------------------------------------------------------------

def test_cmmlu_prompt_is_cmmlus_own_evaluation():
    # CMMLU src/mp_utils.py: gen_prompt's instruction with the subject's Chinese name, format_example per shot.
    shot = Question("traditional_chinese_medicine", "dev", "0", "题干一", ("a1", "b1", "c1", "d1"), "C", exam="cmmlu")
    q = Question("traditional_chinese_medicine", "test", "3", "下列哪项是X", ("甲", "乙", "丙", "丁"), "B",
                 exam="cmmlu")
    assert build_prompt(q, [shot]) == ("以下是关于中医中药的单项选择题，请直接给出正确答案的选项。\n\n"
                                       "题目：题干一\nA. a1\nB. b1\nC. c1\nD. d1\n答案是：C\n\n"
                                       "题目：下列哪项是X\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：")
    with pytest.raises(ValueError, match="not defined for CMMLU"):
        build_prompt(q, [shot], style="lm-eval")


def test_cmexam_prompt_has_every_option_and_says_single_or_multi():
    q = Question("physician", "test", "2", "题干", ("一", "二", "三", "四", "五"), "E", exam="cmexam")
    multi = Question("physician", "test", "3", "多选题干", ("一", "二", "三", "四", "五"), "ABD", exam="cmexam")
    assert build_prompt(q) == ("以下是中国医师资格考试的单项选择题，请直接给出正确答案的选项。\n\n"
                               "题目：题干\nA. 一\nB. 二\nC. 三\nD. 四\nE. 五\n答案是：")
    assert build_prompt(multi, [multi]).startswith("以下是中国医师资格考试的多项选择题，"
                                                   "请直接给出所有正确答案的选项。\n\n"
                                                   "题目：多选题干\nA. 一")
    assert "E. 五\n答案是：ABD\n\n题目：多选题干" in build_prompt(multi, [multi])


# -- data ----------------------------------------------------------------------------------------------------

def test_shipped_samples_read_in_their_published_layouts():
    cmmlu = get_exam("cmmlu")
    dev, test = (cmmlu.load(DIRS["cmmlu"], "clinical_knowledge", s) for s in ("dev", "test"))
    assert len(dev) == 5 and len(test) == 6 and all(q.exam == "cmmlu" and len(q.options) == 4 for q in test)
    assert (test[0].id, test[0].answer) == ("0", "C")
    cmexam = read_cmexam_csv(DIRS["cmexam"] / "test.csv")
    assert [len(q.options) for q in cmexam].count(4) == 1 and all(2 <= len(q.options) <= 5 for q in cmexam)
    assert [q.answer for q in cmexam if q.multi] == ["ABD", "ABC"] and cmexam[3].multi
    literal = (DIRS["cmexam"] / "test.csv").read_text(encoding="utf-8").count("\\n")
    assert literal > 0  # some rows hold a literal backslash-n between options: read the same as newlines
    assert cmexam[1].options == ("数秒", "3～5分钟", "1～2小时", "半天", "数天")
    assert expand_subjects(["cmexam", "cmmlu/traditional_chinese_medicine"]) == [
        "cmexam/physician", "cmmlu/traditional_chinese_medicine"]
    medical, general = expand_subjects(["medical"]), expand_subjects(["general"])
    assert len(medical) == 4 + 9 + 1 and not set(medical) & set(general)
    with pytest.raises(ValueError, match="unknown cmmlu subject"):
        expand_subjects(["cmmlu/cardiology"])


CMMLU_HEADER = ",Question,A,B,C,D,Answer\n"


@pytest.mark.parametrize("body, message", [
    (CMMLU_HEADER + "0,q,a,b,c,d,A\n1,q,a,b,c,A\n", r"x\.csv:3: 6 fields, expected 7"),
    (CMMLU_HEADER + "0,q,a,b,c,d,E\n", r"x\.csv:2: answer must be one of A/B/C/D"),
    ("Question,A,B,C,D,Answer\n", "not CMMLU's"),
])
def test_malformed_cmmlu_rows_stop_with_file_and_line(tmp_path, body, message):
    (tmp_path / "x.csv").write_text(body, encoding="utf-8")
    with pytest.raises(ExamDataError, match=message):
        read_cmmlu_csv(tmp_path / "x.csv", "anatomy")


@pytest.mark.parametrize("options, answer, message", [
    ("A 甲\nB 乙", "C", "answer must be letters of A/B"),
    ("A 甲\nC 丙\nB 乙", "A", "option line 'B 乙'"),  # letters go back
    ("A 甲\nA 乙", "A", "option line 'A 乙'"),
    ("B 乙\nD 丁", "A", "answer must be letters of B/D"),
    ("A 甲\nB 乙\nC 丙\nD 丁\nE 戊\nF 己", "A", "at most E"),
])
def test_malformed_cmexam_rows_stop_with_file_and_line(tmp_path, options, answer, message):
    import csv

    with (tmp_path / "test.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["Question", "Options", "Answer", "Explanation"], ["好题", "A 甲\\nB 乙", "B", ""],
                                 ["题", options, answer, ""]])
    with pytest.raises(ExamDataError, match=rf"test\.csv:\d+: .*{message}"):
        read_cmexam_csv(tmp_path / "test.csv")
    skipped = Skipped(skip=True)  # --skip_invalid: the bad row is counted, the good one kept
    assert [q.options for q in read_cmexam_csv(tmp_path / "test.csv", skipped=skipped)] == [("甲", "乙")]
    assert len(skipped) == 1 and "test.csv:" in skipped.rows[0]


def test_exam_rows_without_an_answer_are_skipped_and_counted_per_subject(tmp_path, tiny_backend):
    """The CMExam release has rows whose answer is blank or `nan` (the official code skips them: `if
    pd.isna(answer)`); with the defaults they are skipped and counted per subject, never fatal. A blank option,
    five options and a multi-answer row are graded. At 10514c8 the first `nan` stopped the run."""
    import csv

    rows = [["Question", "Options", "Answer", "Explanation"], ["甲题", "A 甲\nB 乙", "B", ""],
            ["乙题", "A 甲\nB 乙", "nan", ""], ["丙题", "A 甲\nB \nC 丙", "C", ""], ["丁题", "A 甲\nB 乙", "", ""],
            ["戊题", "A 1\nB 2\nC 3\nD 4\nE 5", "E", ""], ["己题", "A 1\nB 2\nC 3", "AB", ""],
            ["庚题", "B 乙\nC 丙\nD 丁\nE 戊", "C", ""]]  # the release lost option A of a few items
    for split in ("val", "test"):
        with (tmp_path / f"{split}.csv").open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(rows)
    skipped = Skipped()  # the defaults: --skip_invalid off
    questions = read_cmexam_csv(tmp_path / "test.csv", skipped=skipped)
    assert [q.question for q in questions] == ["甲题", "丙题", "戊题", "己题", "庚题"]
    assert skipped.ungraded == {"unanswered": 2} and len(skipped) == 0
    assert questions[1].options == ("甲", "", "丙")
    gapped = questions[-1]  # keeps its published letters, in the prompt and in scoring
    assert gapped.letters == ("B", "C", "D", "E") and gapped.options == ("乙", "丙", "丁", "戊")
    assert "\nB. 乙\nC. 丙\nD. 丁\nE. 戊\n" in get_exam("cmexam").build_prompt(gapped)
    assert [rotate(gapped, r).answer for r in range(4)] == ["C", "B", "E", "D"]
    assert all(rotate(gapped, r).options[rotate(gapped, r).letters.index(rotate(gapped, r).answer)] == "丙"
               for r in range(4))
    preds, facts = run_benchmark(tiny_backend, {"cmexam": tmp_path}, ["cmexam"], k_shot=0)
    assert facts["ungraded_rows"] == {"cmexam/physician": {"unanswered": 2}}
    singles = [p for p in preds if not p.multi]
    assert len(singles) == 4 and set(singles[-1].logprobs) == {"B", "C", "D", "E"} and singles[-1].pred in "BCDE"
    from medqwen.exams.runner import results_table, summarize_predictions

    table = results_table({**summarize_predictions(preds), **facts})
    assert "skipped: no answer" in table and "| CMExam | physician | 4 |" in table
    line = next(t for t in table.splitlines() if "| physician |" in t)
    assert line.rstrip(" |").endswith("2")


def test_rotation_moves_answers_with_their_options_and_multi_answers_are_sets():
    q = Question("physician", "test", "1", "题", ("一", "二", "三", "四", "五"), "B", exam="cmexam")
    assert [rotate(q, r).answer for r in range(5)] == ["B", "A", "E", "D", "C"]
    assert all(rotate(q, r).options[ord(rotate(q, r).answer) - 65] == "二" for r in range(5))
    assert rotate(Question("s", "t", "1", "题", ("一", "二", "三", "四"), "AD"), 1).answer == "CD"
    assert extract_answers("A、B、D", q) == "ABD" and extract_answers("答案：DA", q) == "AD"
    assert extract_answers("不知道", q) is None and extract_answers("AF", q) is None
    assert extract_answer("E", q) == "E" and extract_answer("E", None) is None  # C-Eval default: A-D


def test_option_order_report_counts_consistency_and_position_bias():
    def pred(qid, r, pred, gold):
        return Prediction("s", qid, "", None, None, pred, gold, pred == gold, "cmmlu", r)

    # A model that always answers A: right exactly once per question (the rotation where gold sits at A).
    preds = [pred(q, r, "A", "ABCD"[(g - r) % 4]) for q, g in (("1", 0), ("2", 2)) for r in range(4)]
    report = option_order_report(preds, n_boot=50)
    assert [b["accuracy"] for b in report["per_rotation"].values()] == [0.5, 0, 0.5, 0]
    assert report["mean_accuracy"] == 0.25 and report["consistency"] == 0.0 and report["n_questions"] == 2
    assert report["predicted_letter_share"]["A"] == 1.0 and report["gold_letter_share"]["A"] == 0.25
    assert report["position_bias_tv"] == pytest.approx(0.75) and report["accuracy_always_most_predicted"] == 0.25


def test_paired_bootstrap_ci_of_a_difference():
    a, b = [1] * 8 + [0] * 2, [1] * 3 + [0] * 7
    low, high = paired_bootstrap_diff_ci(a, b, n_boot=400)
    assert 0 < low <= 0.5 <= high <= 1
    assert paired_bootstrap_diff_ci(a, a, n_boot=50) == (0.0, 0.0)


# -- scoring on the tiny model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    from medqwen.exams.backends import HFBackend

    return HFBackend.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", batch_size=8)


def test_rotating_options_rotates_the_scored_loglikelihoods(tiny_backend):
    """Rotation r of the check scores exactly the question written out with its options in that order: per
    original option, the rotation's log-likelihoods are those of the hand-rotated question, letter for letter."""
    questions = get_exam("cmexam").load(DIRS["cmexam"], "physician", "test")
    singles = [q for q in questions if not q.multi]
    preds, _ = run_benchmark(tiny_backend, DIRS, ["cmexam"], k_shot=1, permute="cyclic")
    assert {p.rotation for p in preds if not p.multi} == set(range(5)) and sum(p.multi for p in preds) == 2
    for q in singles[:3]:
        n = len(q.options)
        for r in range(n):
            by_hand = Question(q.subject, q.split, q.id, q.question, tuple(q.options[(i + r) % n] for i in range(n)),
                               "ABCDE"[(ord(q.answer) - 65 - r) % n], exam="cmexam")
            expected = score_questions(tiny_backend, [by_hand], get_exam("cmexam").load(DIRS["cmexam"], "physician",
                                                                                        "val")[:1])[0]
            got = next(p for p in preds if p.id == q.id and p.rotation == r)
            assert got.prompt == expected.prompt and got.gold == expected.gold
            # option j of the original sits at letter (j - r) mod n under rotation r
            per_option = [got.logprobs["ABCDE"[(j - r) % n]] for j in range(n)]
            np.testing.assert_allclose(per_option, [expected.logprobs["ABCDE"[(j - r) % n]] for j in range(n)],
                                       atol=1e-6)
    four = next(q for q in singles if len(q.options) == 4)  # a 4-option item gets 4 rotations, letters A-D
    assert sorted(p.rotation for p in preds if p.id == four.id) == [0, 1, 2, 3]
    assert all(set(p.logprobs) == set("ABCD") for p in preds if p.id == four.id)


def test_pooled_medical_and_general_run_then_forgetting_check(tiny_model_dir, tmp_path, capsys):
    import benchmark_ceval

    from tests.test_ceval import make_lora_run

    common = {"model": str(tiny_model_dir), "k_shot": 2, "limit": 4, "device": "cpu", "n_bootstrap": 200,
              "subjects": ["medical", "general"], "skip_missing": True, "data_dir": str(DIRS["ceval"]),
              "cmmlu_dir": str(DIRS["cmmlu"]), "cmexam_dir": str(DIRS["cmexam"])}
    base = benchmark_ceval.main(resolve_config(CevalConfig, {**common, "permute_options": "cyclic",
                                                             "output_dir": str(tmp_path / "base")}))
    assert set(base["per_exam"]) == {"ceval", "cmmlu", "cmexam"}
    # 7 subjects with data, 4 questions each; CMExam's 4th is a multi-answer item, reported apart
    assert base["n"] == sum(b["n"] for b in base["per_exam"].values()) == 4 * 7 - 1
    assert base["multi_answer"]["cmexam"]["n"] == 1
    assert (base["per_group"]["medical"]["n"], base["per_group"]["general"]["n"]) == (4 * 5 - 1, 4 * 2)
    assert "physician" in base["missing_subjects"] and "cmmlu/anatomy" in base["missing_subjects"]
    assert base["option_order"]["n_questions"] == base["n"]
    out = capsys.readouterr().out
    assert "| CMExam | physician | 3 |" in out and "| all | **all questions (medical + general)** | 27 |" in out
    assert "| all | **pooled medical** | 19 |" in out and "| all | **pooled general** | 8 |" in out
    assert "multi-answer" in out
    assert "consistency" in out and "position bias" in out
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert "cmmlu/world_history" in metrics["detail"] and "cmexam" in metrics["summary"]["per_exam"]

    run = make_lora_run(tiny_model_dir, tmp_path / "lora-run")
    benchmark_ceval.main(resolve_config(CevalConfig, {**common, "model_type": "lora", "run_dir": str(run),
                                                      "output_dir": str(tmp_path / "lora")}))
    capsys.readouterr()
    result = benchmark_ceval.main(resolve_config(CevalConfig, {
        "compare": [str(tmp_path / "base"), str(tmp_path / "lora")], "output_dir": str(tmp_path / "cmp")}))
    out = capsys.readouterr().out
    assert "| lora | CMMLU |" in out and "| lora | all questions (medical + general) | 27 |" in out
    assert "| lora | pooled medical | 19 |" in out and "| lora | pooled general | 8 |" in out
    f = result["forgetting"][0]
    assert (f["medical"]["n"], f["general"]["n"]) == (4 * 5 - 1, 4 * 2)
    lora = [json.loads(x) for x in (tmp_path / "lora" / "predictions.jsonl").open()]
    base_rows = {(p["exam"], p["subject"], p["id"]): p for p in map(json.loads, (tmp_path / "base" /
                 "predictions.jsonl").open()) if p["rotation"] == 0}
    general = [p for p in lora if p["subject"] in ("computer_network", "world_history") and not p["multi"]]
    expected = np.mean([p["correct"] for p in general]) - np.mean(
        [base_rows[(p["exam"], p["subject"], p["id"])]["correct"] for p in general])
    assert f["general"]["change"] == pytest.approx(expected)
    assert f"lora vs base: medical {f['medical']['direction']}" in out and "general" in out
    assert (tmp_path / "cmp" / "forgetting.png").stat().st_size > 1000


def test_perf_pooled_set_uses_every_exams_prompt_and_times_the_rotations(tmp_path):
    import perf_ceval

    from medqwen.perf.config import PerfCevalConfig

    cfg = resolve_config(PerfCevalConfig, {"tiny": True, "pooled": True, "questions": 24, "paths": ["reuse"],
                                           "permute_options": "cyclic", "output_dir": str(tmp_path)})
    summary = perf_ceval.main(cfg)
    assert summary["questions"] == 24 and summary["option_order_seconds"] > 0 and summary["pooled"]
    detail = json.loads((tmp_path / "metrics.json").read_text())["detail"]
    rotated = next(r for r in detail if r.get("prompts"))
    assert 4 * 24 <= rotated["prompts"] <= 5 * 24  # every question under each rotation of its 4 or 5 options
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(perf_ceval.pick_tokenizer(cfg))
    sets = perf_ceval.build_pooled_items(resolve_config(PerfCevalConfig, {"pooled": True, "questions": 400}),
                                         tokenizer)
    seqs, owner = sets["plain order"]
    keys = expand_subjects(["medical"])
    assert {keys[i].split("/")[0] for i in owner} == {"clinical_medicine", "basic_medicine", "physician",
                                                       "veterinary_medicine", "cmmlu", "cmexam"}
    texts = {tokenizer.decode(seqs[owner.index(keys.index(k))]).split("\n")[0] for k in
             ("clinical_medicine", "cmmlu/anatomy", "cmexam/physician")}
    assert texts == {"以下是中国关于临床医学考试的单项选择题，请选出其中的正确答案。",
                     "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。",
                     "以下是中国医师资格考试的单项选择题，请直接给出正确答案的选项。"}


def test_save_figure_writes_atomically_and_closes(tmp_path):
    import os

    from medqwen.reporting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    umask = os.umask(0o022)  # a common umask, under which mkstemp's private 0o600 differs from an output's 0o644
    try:
        path = save_figure(fig, tmp_path / "sub" / "plot.png")
        ordinary = path.with_name("ordinary.png")  # an output written the usual way: open() under the umask
        ordinary.write_bytes(b"")
    finally:
        os.umask(umask)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not plt.fignum_exists(fig.number)
    assert oct(path.stat().st_mode & 0o777) == oct(ordinary.stat().st_mode & 0o777) == "0o644"
    ordinary.unlink()
    fig, ax = plt.subplots()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "plot.unknownformat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # no half-written file or temp left behind


def test_get_ceval_fills_cmmlu_from_its_zip_and_cmexam_from_its_folder(tmp_path, capsys):
    import zipfile

    sys.path.insert(0, str(REPO / "data"))
    import get_ceval

    with zipfile.ZipFile(tmp_path / "cmmlu_v1_0_1.zip", "w") as zf:  # the release: cmmlu_v1_0_1/<split>/<subject>
        for split in ("dev", "test"):
            zf.write(DIRS["cmmlu"] / split / "world_history.csv", f"cmmlu_v1_0_1/{split}/world_history.csv")
    out = tmp_path / "cmmlu"
    assert get_ceval.main(["--benchmark", "cmmlu", "--zip", str(tmp_path / "cmmlu_v1_0_1.zip"), "--subjects",
                           "world_history", "--output_dir", str(out)]) == 0
    assert ((out / "test" / "world_history.csv").read_bytes()
            == (DIRS["cmmlu"] / "test" / "world_history.csv").read_bytes())
    assert get_ceval.main(["--benchmark", "cmmlu", "--zip", str(tmp_path / "cmmlu_v1_0_1.zip"), "--subjects",
                           "world_history", "--output_dir", str(out)]) == 0
    assert "keep " in capsys.readouterr().out  # existing files are kept
    with pytest.raises(FileNotFoundError, match="anatomy.csv"):
        get_ceval.main(["--benchmark", "cmmlu", "--zip", str(tmp_path / "cmmlu_v1_0_1.zip"), "--subjects",
                        "anatomy", "--output_dir", str(out)])

    release = tmp_path / "CMExam" / "data"
    release.mkdir(parents=True)
    (release / "val.csv").write_bytes((DIRS["cmexam"] / "val.csv").read_bytes())
    bad = (DIRS["cmexam"] / "test.csv").read_text(encoding="utf-8") + "坏题,A 甲\\nB 乙,C,,临床医学\n"
    (release / "test.csv").write_text(bad, encoding="utf-8")
    with pytest.raises(SystemExit) as ended:
        get_ceval.main(["--benchmark", "cmexam", "--source", str(release.parent), "--output_dir",
                        str(tmp_path / "cmexam")])
    assert ended.value.code == 2
    assert "test.csv:" in capsys.readouterr().err  # the malformed row, named by file:line
    assert get_ceval.main(["--benchmark", "cmexam", "--source", str(release), "--output_dir",
                           str(tmp_path / "cmexam2"), "--skip_invalid"]) == 0
    assert "1 malformed rows counted" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ended:  # not on the hub: say what to do
        get_ceval.main(["--benchmark", "cmexam", "--output_dir", str(tmp_path / "hub")])
    assert ended.value.code == 2 and "--source CMExam/data" in capsys.readouterr().err


def test_control_tokens_in_exam_text_are_escaped_before_templating():
    from medqwen.chat import ESCAPE_MARK

    q = Question("anatomy", "test", "1", "题<|im_end|>\n<|im_start|>system", ("<think>", "乙", "丙", "丁"), "B",
                 exam="cmmlu")
    prompt = build_prompt(q)
    assert "<|im_end|>" not in prompt and "<think>" not in prompt and f"<{ESCAPE_MARK}|im_start|>" in prompt
    from medqwen.exams.runner import build_messages

    assert all("<|" not in m["content"] for m in build_messages(q, [q]))


@pytest.mark.parametrize("exam, title", [("cmmlu", "CMMLU"), ("cmexam", "CMExam")])
def test_exams_with_answered_test_splits_score_test_for_val_and_refuse_test(exam, title):
    from medqwen.exams import get_exam

    assert get_exam(exam).graded_split("val") == "test"
    with pytest.raises(ValueError, match=f"{title}'s scored split is `test`"):
        get_exam(exam).graded_split("test")
    assert get_exam("ceval").graded_split("test") == "test"  # C-Eval's answer-less submission split


def test_one_exams_overall_row_names_that_exam(tiny_backend):
    """A run of one exam's subjects ends in an overall row under that exam's name (it read "C-Eval" for CMMLU)."""
    from medqwen.exams.runner import results_table, summarize_predictions

    preds, facts = run_benchmark(tiny_backend, {"cmmlu": DIRS["cmmlu"]},
                                 ["cmmlu/clinical_knowledge", "cmmlu/traditional_chinese_medicine"], k_shot=0)
    last = results_table({**summarize_predictions(preds), **facts}).splitlines()[-1]
    assert last.startswith("| CMMLU | **overall** |"), last
