"""Team-written tool-use conversations for LoRA training: calculator, weather and time, in Chinese and English.

Each conversation is the OpenAI message shape the agent produces at serving time: system prompt, user question,
an assistant turn with `tool_calls`, the `tool` result, and the final answer; the record's `tools` are the
schemas the agent sends (medqwen.agent.agent.openai_tool_schemas), so training renders exactly the served prompt
(the hermes `<tool_call>` format comes from the chat template). Tool results are computed by the real tools:
the calculator's values and the time tool's text are exact; weather values are synthetic (no network), formatted
by the weather tool's own formatter. A share of questions needs no tool.

    records = make_tool_conversations(n=400, seed=42)
    heldout = make_heldout_arithmetic(n=30, seed=42, exclude=records)
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from medqwen.agent.agent import DEFAULT_SYSTEM_PROMPT, build_tools, openai_tool_schemas
from medqwen.agent.config import AgentConfig
from medqwen.agent.tools import CITIES, calculate, format_current, format_forecast, get_current_time

ARITHMETIC_QUESTIONS = {
    "en": ["What is {e}?", "Calculate {e}.", "Please compute {e}.", "How much is {e}?", "Can you work out {e}?",
           "{e} = ?", "What does {e} equal?", "Quick math: {e}"],
    "zh": ["帮我计算 {e}", "{e} 等于多少？", "请算一下 {e}", "计算 {e} 的结果", "{e} 是多少？", "算一算：{e}"],
}
ARITHMETIC_ANSWERS = {
    "en": ["{e} = {r}.", "The answer is {r}.", "The result is {r}.", "{e} equals {r}."],
    "zh": ["{e} = {r}。", "计算结果是 {r}。", "答案是 {r}。", "结果为 {r}。"],
}
# (question, expression builder, answer) for short word problems; the model has to write the expression.
WORD_PROBLEMS = {
    "en": [
        ("I bought {a} notebooks at {b} dollars each. How much did I spend?", "{a} * {b}", "You spent {r} dollars."),
        ("A bottle holds {a} ml. How many ml are in {b} bottles?", "{a} * {b}", "{b} bottles hold {r} ml."),
        ("I had {a} dollars and spent {b}. How much is left?", "{a} - {b}", "You have {r} dollars left."),
        ("Split {a} dollars evenly among {b} people. How much does each get?", "{a} / {b}",
         "Each person gets {r} dollars."),
        ("A patient takes {a} mg a day for {b} days. What is the total dose?", "{a} * {b}",
         "The total dose is {r} mg."),
    ],
    "zh": [
        ("每盒药有 {a} 片，{b} 盒一共多少片？", "{a} * {b}", "一共 {r} 片。"),
        ("一天服用 {a} 毫克，连续 {b} 天，总剂量是多少毫克？", "{a} * {b}", "总剂量是 {r} 毫克。"),
        ("我有 {a} 元，花了 {b} 元，还剩多少？", "{a} - {b}", "还剩 {r} 元。"),
        ("{a} 元平均分给 {b} 个人，每人多少？", "{a} / {b}", "每人 {r} 元。"),
        ("体重 {w} 公斤，身高 {h} 米，BMI 是多少？", "{w} / {h} ** 2", "BMI 约为 {r}（体重除以身高的平方）。"),
    ],
}
DIVISION_BY_ZERO_ANSWER = {"en": "{e} has no value: division by zero is undefined.",
                           "zh": "{e} 没有结果：除数不能为零。"}

WEATHER_QUESTIONS = {
    "en": {"now": ["What's the weather like in {c}?", "How is the weather in {c} right now?", "Weather in {c}?"],
           "tomorrow": ["What's the weather in {c} tomorrow?", "Will it rain in {c} tomorrow?",
                        "Forecast for {c} tomorrow, please."]},
    "zh": {"now": ["{c}现在天气怎么样？", "{c}今天天气如何？", "查一下{c}的天气"],
           "tomorrow": ["{c}明天天气怎么样？", "明天{c}会下雨吗？", "帮我查一下{c}明天的天气"]},
}
WEATHER_ANSWERS = {"en": "Here is the weather: {r}.", "zh": "查询结果：{r}。"}
DESCRIPTIONS = {"en": ["clear sky", "few clouds", "overcast clouds", "light rain", "moderate rain", "thunderstorm",
                       "light snow", "mist"],
                "zh": ["晴", "少云", "阴", "小雨", "中雨", "雷阵雨", "小雪", "薄雾"]}

TIME_QUESTIONS = {
    "en": ["What time is it in {c}?", "What's the current time in {c}?", "What day is it today in {c}?"],
    "zh": ["{c}现在几点了？", "现在{c}是几点？", "{c}今天星期几？"],
}
TIME_ANSWERS = {"en": "In {c} it is {t} on {d}.", "zh": "{c}现在是 {t}，{d}。"}

NO_TOOL = {
    "en": [("Hello!", "Hello! I can do arithmetic, look up the weather and tell the time. What would you like?"),
           ("What can you do?", "I can calculate expressions exactly, look up current weather and forecasts, and "
                                "tell the current time in a city or timezone."),
           ("Thanks!", "You're welcome!"),
           ("Why is drinking water important?", "Water helps regulate body temperature, carries nutrients and "
                                                 "removes waste. Most adults need about 1.5 to 2 litres a day, "
                                                 "more in hot weather or with exercise.")],
    "zh": [("你好", "你好！我可以帮你计算、查询天气和时间。有什么需要？"),
           ("你能做什么？", "我可以精确计算算式、查询天气和预报，以及告诉你某个城市或时区的当前时间。"),
           ("谢谢", "不客气！"),
           ("多喝水有什么好处？", "适量饮水有助于调节体温、运输营养和排出代谢废物。成年人一般每天约需 1.5 至 2 升，"
                                 "天热或运动时应适当增加。")],
}


# ----------------------------------------------------------------------------------------------------------
# Builders


def random_expression(rng: random.Random) -> str:
    """A short arithmetic expression: 2-4 integers (sometimes decimals), + - * / and maybe parentheses."""
    n = rng.choice([2, 2, 3, 3, 4])
    numbers = [str(rng.randint(1, 999)) if rng.random() < 0.85 else f"{rng.randint(1, 99)}.{rng.randint(1, 9)}"
               for _ in range(n)]
    ops = [rng.choice(["+", "-", "*", "/", "+", "*"]) for _ in range(n - 1)]
    parts = [numbers[0]]
    for op, number in zip(ops, numbers[1:]):
        parts += [op, number]
    if n >= 3 and rng.random() < 0.5:  # parenthesise the first two operands
        parts[0], parts[2] = "(" + parts[0], parts[2] + ")"
    sep = rng.choice([" ", " ", ""])
    return sep.join(parts)


def _call(name: str, arguments: dict, index: int = 0) -> dict:
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_turns(question: str, name: str, arguments: dict, result: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_calls": [_call(name, arguments)]},
            {"role": "tool", "tool_call_id": "call_0", "name": name, "content": result},
            {"role": "assistant", "content": answer}]


def arithmetic_example(rng: random.Random, lang: str, word_problem: bool | None = None) -> dict:
    """A calculator conversation (plus `expression`, `answer` and `kind` for held-out scoring)."""
    if word_problem is None:
        word_problem = rng.random() < 0.3
    values: dict = {}
    if word_problem:
        question, expression, answer = rng.choice(WORD_PROBLEMS[lang])
        values = {"a": rng.randint(2, 500), "b": rng.randint(2, 60), "w": rng.randint(40, 110),
                  "h": f"1.{rng.randint(50, 95)}"}
        question, expression = question.format(**values), expression.format(**values)
    elif rng.random() < 0.03:
        expression = f"{rng.randint(1, 99)} / 0"
        question, answer = rng.choice(ARITHMETIC_QUESTIONS[lang]).format(e=expression), DIVISION_BY_ZERO_ANSWER[lang]
    else:
        expression = random_expression(rng)
        question = rng.choice(ARITHMETIC_QUESTIONS[lang]).format(e=expression)
        answer = rng.choice(ARITHMETIC_ANSWERS[lang])
    result = calculate(expression)
    turns = _tool_turns(question, "calculator", {"expression": expression}, result,
                        answer.format(e=expression, r=result, **values))
    return {"turns": turns, "expression": expression, "answer": result,
            "kind": "word" if word_problem else "direct"}


def weather_example(rng: random.Random, lang: str) -> dict:
    zh_name = rng.choice(list(CITIES))
    city = zh_name if lang == "zh" else CITIES[zh_name][0]
    when = rng.choice(["now", "tomorrow"])
    question = rng.choice(WEATHER_QUESTIONS[lang][when]).format(c=city)
    description = rng.choice(DESCRIPTIONS[lang])
    temp = rng.uniform(-10, 35)
    name = CITIES[zh_name][0]
    if when == "now":
        data = {"name": name, "weather": [{"description": description}],
                "main": {"temp": temp, "feels_like": temp - rng.uniform(0, 4), "humidity": rng.randint(15, 95)},
                "wind": {"speed": rng.uniform(0, 12)}}
        result = format_current(data, city, "metric")
    else:
        day = dt.date(2026, 1, 1) + dt.timedelta(days=rng.randint(0, 364))
        start = dt.datetime.combine(day, dt.time(0), dt.timezone.utc)
        entries = [{"dt": int((start + dt.timedelta(hours=3 * i)).timestamp()),
                    "main": {"temp_min": temp + rng.uniform(-4, 0), "temp_max": temp + rng.uniform(0, 6)},
                    "weather": [{"description": description}], "pop": rng.choice([0, 0.1, 0.3, 0.6, 0.9])}
                   for i in range(8)]
        result = format_forecast({"list": entries, "city": {"name": name, "timezone": 0}}, city, day, "metric")
    arguments = {"city": city, "when": when}  # strict schemas require every field
    return {"turns": _tool_turns(question, "get_weather", arguments, result, WEATHER_ANSWERS[lang].format(r=result))}


def time_example(rng: random.Random, lang: str) -> dict:
    zh_name = rng.choice(list(CITIES))
    city = zh_name if lang == "zh" else CITIES[zh_name][0]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=rng.randint(0, 525_600))
    result = get_current_time(city, now=now)
    date, clock, weekday = result.split(" ")[:3]
    weekday = weekday.split("/")[0 if lang == "en" else 1]
    question = rng.choice(TIME_QUESTIONS[lang]).format(c=city)
    day = f"{weekday}, {date}" if lang == "en" else f"{date} {weekday}"
    answer = TIME_ANSWERS[lang].format(c=city, t=clock[:5], d=day)
    return {"turns": _tool_turns(question, "get_current_time", {"timezone": city}, result, answer)}


def no_tool_example(rng: random.Random, lang: str) -> dict:
    question, answer = rng.choice(NO_TOOL[lang])
    return {"turns": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


BUILDERS = {"calculator": arithmetic_example, "get_weather": weather_example, "get_current_time": time_example}


def make_tool_conversations(n: int, seed: int = 42, tools: list[str] | None = None, languages: list[str] | None = None,
                            no_tool_ratio: float = 0.1, system_prompt: str | None = None,
                            tool_schemas: list[dict] | None = None) -> list[dict[str, Any]]:
    """`n` records `{"conversations": [...], "tools": [...]}`, tools cycled evenly, languages at random."""
    tools = tools or list(BUILDERS)
    unknown = sorted(set(tools) - set(BUILDERS))
    if unknown:
        raise ValueError(f"no generator for tool(s) {unknown}; known: {list(BUILDERS)}")
    languages = languages or ["zh", "en"]
    schemas = tool_schemas or openai_tool_schemas(build_tools(AgentConfig()))
    system = {"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT}
    rng = random.Random(seed)
    records = []
    for i in range(n):
        lang = rng.choice(languages)
        if rng.random() < no_tool_ratio:
            example = no_tool_example(rng, lang)
        else:
            example = BUILDERS[tools[i % len(tools)]](rng, lang)
        records.append({"conversations": [system] + example["turns"], "tools": schemas})
    return records


def make_heldout_arithmetic(n: int, seed: int = 42, languages: list[str] | None = None,
                            exclude: list[dict] | None = None) -> list[dict]:
    """`n` arithmetic questions `{question, expression, answer, language, kind}` none of which is in `exclude`."""
    seen = {m["content"] for r in exclude or [] for m in r["conversations"] if m["role"] == "user"}
    rng = random.Random(seed + 1_000_003)  # a stream of its own
    languages = languages or ["zh", "en"]
    out: list[dict] = []
    while len(out) < n:
        lang = rng.choice(languages)
        example = arithmetic_example(rng, lang)
        question = example["turns"][0]["content"]
        if question in seen or example["answer"].startswith("Error"):
            continue
        seen.add(question)
        out.append({"question": question, "expression": example["expression"], "answer": example["answer"],
                    "language": lang, "kind": example["kind"]})
    return out


