"""The tool-use data generator (data/make_tool_data.py) and the agent evaluation's scoring (agent/eval_agent.py)."""

import importlib.util
import json
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from medqwen.agent.config import ToolDataConfig
from medqwen.agent.tool_data import make_heldout_arithmetic, make_tool_conversations
from medqwen.agent.tools import calculate, get_current_time
from medqwen.chat import encode_with_assistant_mask, load_tokenizer, render

REPO = Path(__file__).resolve().parent.parent


def _load_script(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def records():
    return make_tool_conversations(200, seed=7)


def test_generator_covers_tools_and_languages(records):
    calls = [(m["tool_calls"][0]["function"]["name"],
              "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in r["conversations"][1]["content"]) else "en")
             for r in records for m in r["conversations"] if m.get("tool_calls")]
    assert {name for name, _ in calls} == {"calculator", "get_weather", "get_current_time"}
    assert {lang for _, lang in calls} == {"zh", "en"}
    no_tool = [r for r in records if not any(m.get("tool_calls") for m in r["conversations"])]
    assert 5 <= len(no_tool) <= 40  # about 10% of 200
    assert make_tool_conversations(200, seed=7) == records  # seeded


def test_tool_calls_follow_the_schemas_and_results_are_real(records):
    for record in records:
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in record["tools"]}
        messages = record["conversations"]
        for i, message in enumerate(messages):
            for call in message.get("tool_calls") or []:
                fn = call["function"]
                params = schemas[fn["name"]]
                assert set(fn["arguments"]) <= set(params["properties"])
                assert set(params.get("required", [])) <= set(fn["arguments"])
                result = messages[i + 1]
                assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
                if fn["name"] == "calculator":
                    assert result["content"] == calculate(fn["arguments"]["expression"])
                    answer = messages[i + 2]["content"]
                    if result["content"].startswith("Error"):
                        assert "zero" in answer or "零" in answer  # the division-by-zero examples
                    else:
                        assert result["content"] in answer
                if fn["name"] == "get_current_time":
                    zone = result["content"].split("(")[1].split(",")[0]
                    assert zone == get_current_time(fn["arguments"]["timezone"]).split("(")[1].split(",")[0]


def test_records_train_and_render_as_hermes_tool_calls(records, tmp_path, bundled_model_dir):
    from medqwen.data.conversations import read_conversations

    path = tmp_path / "tool_use.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert len(read_conversations(path)) == len(records)  # the trainer accepts every record

    tokenizer = load_tokenizer(bundled_model_dir)
    record = next(r for r in records if r["conversations"][2].get("tool_calls"))
    call = record["conversations"][2]["tool_calls"][0]["function"]
    text = render(tokenizer, record["conversations"], tools=record["tools"])
    expected = ('<|im_start|>assistant\n<tool_call>\n{"name": "' + call["name"] + '", "arguments": '
                + json.dumps(call["arguments"], ensure_ascii=False) + "}\n</tool_call><|im_end|>")
    assert expected in text and "# Tools" in text
    ids, mask = encode_with_assistant_mask(tokenizer, record["conversations"], tools=record["tools"])
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert "<tool_call>" in trained and "<tool_response>" not in trained and "# Tools" not in trained


def test_heldout_questions_are_new_and_answered(records):
    heldout = make_heldout_arithmetic(30, seed=7, exclude=records)
    seen = {m["content"] for r in records for m in r["conversations"] if m["role"] == "user"}
    assert len(heldout) == 30 and not any(h["question"] in seen for h in heldout)
    assert all(h["answer"] == calculate(h["expression"]) and not h["answer"].startswith("Error") for h in heldout)


def test_make_tool_data_script(tmp_path):
    script = _load_script("data/make_tool_data.py")
    out = tmp_path / "tools.jsonl"
    script.main(ToolDataConfig(output=str(out), num_examples=20, languages=["en"],
                               heldout_output=str(tmp_path / "h.jsonl"), heldout_size=5))
    assert len(out.read_text(encoding="utf-8").splitlines()) == 20
    assert len((tmp_path / "h.jsonl").read_text().splitlines()) == 5
    assert (tmp_path / "tools.config.yaml").is_file()


def test_eval_scoring():
    script = _load_script("agent/eval_agent.py")
    assert script.answer_is_correct("(12 + 8) * 3 = 60.", "60")
    assert script.answer_is_correct("The total is 1,273 dollars.", "1273")
    assert script.answer_is_correct("It is 130.727272727", "130.727272727")
    assert not script.answer_is_correct("It is 61 or so (12 + 8 = 20).", "60")
    item = {"question": "What is 2 * 3?", "answer": "6"}
    history = [HumanMessage(item["question"]),
               AIMessage("", tool_calls=[{"name": "calculator", "args": {"expression": "3 * 2"}, "id": "c",
                                          "type": "tool_call"}]),
               ToolMessage("6", tool_call_id="c"), AIMessage("2 * 3 = 6.")]
    row = script.score(item, history)
    assert row["tool_called"] and row["expression_correct"] and row["answer_correct"]
    row = script.score(item, [HumanMessage(item["question"]), AIMessage("It is 5.")])
    assert not row["tool_called"] and not row["expression_correct"] and not row["answer_correct"]
