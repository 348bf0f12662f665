"""Measure the agent on held-out arithmetic questions: does the model call the calculator, with the right
expression, and does its final answer carry the right number?

    python data/make_tool_data.py --heldout_output data/heldout_arithmetic.jsonl    # the questions
    bash agent/serve_vllm.sh                                                        # the server
    python agent/eval_agent.py --temperature 0 --output_dir out/eval/agent-lora

Writes predictions.jsonl (one row per question), metrics.json and config.yaml to --output_dir and prints a
Markdown table. No tool is forced: the model decides on its own whether to call one.
"""

import re
import time
from pathlib import Path

from tqdm import tqdm

from medqwen.agent.agent import ask, build_agent, check_server, final_answer
from medqwen.agent.config import AgentEvalConfig
from medqwen.agent.tools import evaluate
from medqwen.cli import run_script
from medqwen.configlib import save_config
from medqwen.jsonl import iter_jsonl_objects, write_jsonl
from medqwen.reporting import markdown_table, write_metrics

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def answer_is_correct(text: str, expected: str) -> bool:
    """True when a number in `text` equals `expected` (to 9 significant digits; '1,273' reads as 1273)."""
    target = float(expected)
    for match in NUMBER.findall(text):
        value = float(match.replace(",", ""))
        if abs(value - target) <= 1e-9 * max(1.0, abs(target)):
            return True
    return False


def score(item: dict, history: list) -> dict:
    """One prediction row: the calculator calls the model made and whether the answer is right."""
    from langchain_core.messages import AIMessage

    calls = [c for m in history if isinstance(m, AIMessage) for c in m.tool_calls if c["name"] == "calculator"]
    expressions = [c["args"].get("expression", "") for c in calls]

    def value_matches(expression: str) -> bool:
        try:
            return abs(evaluate(expression) - float(item["answer"])) <= 1e-9 * max(1.0, abs(float(item["answer"])))
        except ValueError:
            return False

    answer = final_answer(history)
    return {**item, "tool_called": bool(calls), "expressions": expressions,
            "expression_correct": any(value_matches(e) for e in expressions),
            "final_answer": answer, "answer_correct": answer_is_correct(answer, item["answer"])}


def main(cfg: AgentEvalConfig) -> dict:
    out = Path(cfg.output_dir)
    save_config(cfg, out / "config.yaml")
    items = [item for _, item in iter_jsonl_objects(cfg.questions)]
    items = items[:cfg.limit] if cfg.limit else items
    served = check_server(cfg)
    agent = build_agent(cfg)
    rows, start = [], time.perf_counter()
    for item in tqdm(items, desc="questions"):
        history = ask(agent, cfg, [], item["question"], write=lambda s: None)
        rows.append(score(item, history))
    write_jsonl(rows, out / "predictions.jsonl")

    def rates(subset: list[dict]) -> dict:
        n = len(subset)
        return {"n": n, "tool_call_rate": sum(r["tool_called"] for r in subset) / n,
                "expression_correct_rate": sum(r["expression_correct"] for r in subset) / n,
                "answer_accuracy": sum(r["answer_correct"] for r in subset) / n}

    summary = {**rates(rows), "seconds": round(time.perf_counter() - start, 1)}
    detail = {kind: rates([r for r in rows if r.get("kind") == kind]) for kind in sorted({r.get("kind") for r in rows})}
    write_metrics(out, summary, detail, {"model": cfg.served_model, "base_url": cfg.base_url, "served": served,
                                         "questions": cfg.questions})
    table = [["all", summary["n"], summary["tool_call_rate"], summary["expression_correct_rate"],
              summary["answer_accuracy"]]]
    table += [[k, v["n"], v["tool_call_rate"], v["expression_correct_rate"], v["answer_accuracy"]]
              for k, v in detail.items()]
    print(markdown_table(table, ["questions", "n", "calculator called", "right expression", "right answer"]))
    print(f"wrote {out}/predictions.jsonl and metrics.json")
    return summary


if __name__ == "__main__":
    run_script(AgentEvalConfig, main, description=__doc__)
