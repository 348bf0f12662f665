"""The popular public medical datasets' published layouts, one team-written fixture each (tests/fixtures/data/
layouts: invented text in the exact column/key names, encoding and quirks), plus the unrecognised-layout message
and the --columns/--roles mapping. docs/data.md has the command for each."""

import json
from pathlib import Path

import pytest

from medqwen.data import DataError, prepare
from medqwen.data.config import DataConfig

LAYOUTS = Path(__file__).parent / "fixtures" / "data" / "layouts"


def run(tmp_path, inputs, **overrides):
    cfg = DataConfig(input=[str(p) for p in inputs], output=str(tmp_path / "o.jsonl"), tokenizer="none",
                     shuffle=False, **overrides)
    stats = prepare(cfg, verbose=False)
    return stats, [json.loads(line)["conversations"] for line in (tmp_path / "o.jsonl").read_text("utf-8").splitlines()]


def qa(question, answer):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize("name, fmt, encoding, first", [
    ("toyhom_department.csv", "department_csv", "gb18030",
     qa("血压偏高怎么办\n体检说血压145/95，平时没有不舒服。",
        "建议连续几天在家测量血压并记录，再带记录去心内科复诊。")),
    ("huatuogpt_sft.jsonl", "huatuo", "utf-8",
     qa("嗓子疼吃什么好？", "多喝温水，清淡饮食；发热或吞咽困难请就医。")
     + qa("可以吃冰的吗？", "少吃为好，冷饮可能加重刺激。")),
    ("huatuo26m_lite.jsonl", "qa", "utf-8", qa("缺铁性贫血吃什么？", "多吃瘦肉、动物肝脏，按医嘱补铁。")),
    ("huatuo26m_encyclopedia.jsonl", "qa", "utf-8",
     qa("痛风是什么病？", "痛风是尿酸升高引起的关节炎症，需要控制饮食并遵医嘱治疗。")),
    ("shibing624_medical_finetune.json", "alpaca", "utf-8",
     qa("腰痛需要做哪些检查？", "可先做腰椎影像检查和尿常规，具体请听医生安排。")),
    ("disc_med_sft.jsonl", "messages", "utf-8",
     qa("我最近总是口干，要紧吗？",
        "口干可能与饮水少有关，也可能提示血糖问题，建议测一下血糖。")
     + qa("需要空腹测吗？", "空腹血糖需要至少8小时不进食，早上抽血。")),
    ("chatmed_consult.json", "qa", "utf-8",
     qa("膝盖上下楼梯疼是怎么回事？", "可能与髌骨软骨劳损有关，减少爬楼，疼痛持续请看骨科。")),
    ("huatuo_llama_med.json", "alpaca", "utf-8",
     qa("一位患者反复咳嗽两周，应该做什么检查？", "建议拍胸片并查血常规，必要时做肺功能检查。")),
    ("medicalgpt_sharegpt.jsonl", "sharegpt", "utf-8",
     qa("脚后跟早上起床时疼怎么办？", "可能是足底筋膜炎，注意休息和拉伸，穿软底鞋。")),
])
def test_published_layout_converts_with_the_defaults(tmp_path, name, fmt, encoding, first):
    stats, out = run(tmp_path, [LAYOUTS / name])
    (detail,) = stats["detail"]
    assert (detail["format"], detail["encoding"], detail["invalid"]) == (fmt, encoding, {})
    assert out[0] == first and detail["kept"] == detail["read"]


def test_toyhom_quote_inside_a_field_is_a_character(tmp_path):
    """The corpus's quirk (its 内科 sample's line 5159): one quote inside an unquoted field, a character for
    csv.reader; the 10514c8 reader stopped there ("unbalanced quote")."""
    stats, out = run(tmp_path, [LAYOUTS / "toyhom_department.csv"])
    assert [c[0]["content"] for c in out][1:] == ['乙肝表面抗原阳性\n报告写着小三阳"阳性，需要治疗吗？',
                                                  "胃胀\n饭后胃胀，\r\n偶尔反酸"]


def test_cmedqa2_answers_are_joined_with_their_questions(tmp_path):
    stats, out = run(tmp_path, [LAYOUTS / "cmedqa2"])  # the folder: question.csv is read through answer.csv
    assert [c[0]["content"] for c in out] == ["宝宝发烧38度要去医院吗？", "宝宝发烧38度要去医院吗？",
                                              "晚上睡不着怎么调理？"]
    assert [d["format"] for d in stats["detail"]] == ["cmedqa_answer", "cmedqa_question"]
    assert stats["summary"]["kept"] == 3


def test_an_unrecognised_layout_is_one_message_naming_its_keys(tmp_path):
    path = LAYOUTS / "huatuogpt_med_dialog.json"
    for skip in (False, True):
        with pytest.raises(DataError, match=r"huatuogpt_med_dialog.json:\d+: cannot tell the layout from the keys "
                                            r"\['department', 'doctor_diagnosis', 'id', 'medical_case'\].*--columns"):
            run(tmp_path, [path], skip_invalid=skip)


def test_columns_and_roles_mappings(tmp_path):
    stats, out = run(tmp_path, [LAYOUTS / "huatuogpt_med_dialog.json"],
                     columns="question=medical_case,answer=doctor_diagnosis")
    assert out[0][0]["content"].startswith("疾病：\n湿疹") and out[0][1]["content"].endswith("按医嘱外用药。")
    nested = tmp_path / "nested.jsonl"
    record = {"Case": {"Text": "头晕"}, "Reply": {"Text": "先量血压"},
              "dialog": [{"Speaker": "patient", "Says": "头晕"}, {"Speaker": "doctor", "Says": "先量血压"}]}
    nested.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    stats, out = run(tmp_path, [nested], columns="messages=dialog,role=speaker,content=says",
                     roles="patient=user,doctor=assistant")
    assert out == [qa("头晕", "先量血压")]
    stats, out = run(tmp_path, [nested], columns="question=case.text,answer=reply.text")  # dotted paths
    assert out == [qa("头晕", "先量血压")]


def test_pretty_printed_records_and_a_file_that_is_not_json(tmp_path):
    """Pretty-printed objects one after another read as JSON does; a file with no JSON record at all is one
    message for the file, not one invalid_json count per line (at 10514c8: 3 records counted invalid, 0 kept)."""
    pretty = tmp_path / "pretty.jsonl"
    records = [{"Question": "头痛怎么办？", "Answer": "休息，必要时就医。"}, {"问": "发烧？", "答": "多喝水。"}]
    pretty.write_text("".join(json.dumps(r, ensure_ascii=False, indent=2) + "\n" for r in records), encoding="utf-8")
    stats, out = run(tmp_path, [pretty])
    assert out == [qa("头痛怎么办？", "休息，必要时就医。"), qa("发烧？", "多喝水。")]
    text = tmp_path / "notes.jsonl"
    text.write_text("头痛怎么办\n休息\n就医\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"notes.jsonl:1: no record of this file could be read"):
        run(tmp_path, [text], skip_invalid=True)
