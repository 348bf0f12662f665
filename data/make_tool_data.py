"""Write team-written tool-use conversations (calculator, weather, time; Chinese and English) for LoRA training.

    # 400 conversations in both languages -> data/tool_use.jsonl (+ tool_use.config.yaml, a summary table)
    python data/make_tool_data.py

    # English calculator-only data for the bundled SmolLM2, with 30 held-out questions for agent/eval_agent.py
    python data/make_tool_data.py --languages en --output out/tooldemo/data/tool_use.jsonl \
        --heldout_output out/tooldemo/data/heldout_arithmetic.jsonl

    # then train on it, alone or mixed into the medical data (the trainer reads the records' `tools`)
    python trainer/train_lora.py --data_path data/tool_use.jsonl --output_dir out/qwen3-4b-lora-tools

Each line: {"conversations": [system, user, assistant with tool_calls, tool, assistant], "tools": [...]}, in the
OpenAI message shape the agent sends to vLLM, so training renders exactly the prompts the served model sees.
"""

from collections import Counter
from pathlib import Path

from medqwen.agent.config import ToolDataConfig
from medqwen.agent.tool_data import make_heldout_arithmetic, make_tool_conversations
from medqwen.cli import run_script
from medqwen.configlib import save_config
from medqwen.jsonl import write_jsonl
from medqwen.reporting import markdown_table


def main(cfg: ToolDataConfig) -> dict:
    output = Path(cfg.output)
    save_config(cfg, output.with_suffix(".config.yaml"))
    records = make_tool_conversations(cfg.num_examples, cfg.seed, cfg.tools, cfg.languages, cfg.no_tool_ratio)
    write_jsonl(records, output)
    counts = Counter()
    for record in records:
        calls = [c["function"]["name"] for m in record["conversations"] for c in m.get("tool_calls") or []]
        language = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in record["conversations"][1]["content"]) else "en"
        counts[(calls[0] if calls else "(no tool)", language)] += 1
    rows = [[tool, lang, n] for (tool, lang), n in sorted(counts.items())]
    print(markdown_table(rows, ["tool", "language", "conversations"]))
    print(f"wrote {len(records)} conversations to {output}")
    if cfg.heldout_output:
        heldout = make_heldout_arithmetic(cfg.heldout_size, cfg.seed, cfg.languages, exclude=records)
        write_jsonl(heldout, cfg.heldout_output)
        print(f"wrote {len(heldout)} held-out arithmetic questions (none seen in training) to {cfg.heldout_output}")
    return dict(counts)


if __name__ == "__main__":
    run_script(ToolDataConfig, main, description=__doc__)
