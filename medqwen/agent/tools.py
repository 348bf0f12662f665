"""The agent's tools as plain, tested functions: a safe calculator, OpenWeatherMap weather, the current time.

Every tool returns a string, also on failure ("Error: ..."), so a bad call goes back to the model as a message
it can read and correct, and never crashes the agent. `medqwen/agent/agent.py` wraps these as LangChain tools.

    calculate("(12 + 8) * 3")                         # '60'
    get_weather("北京", when="明天", api_key=...)       # tomorrow's forecast, in Chinese
    get_current_time("New York")
    # -> '2026-11-29 07:58:03 Sunday/星期日 (America/New_York, UTC-05:00)'
"""

from __future__ import annotations

import ast
import datetime as dt
import math
import operator
import re
import unicodedata
import warnings
from collections import Counter
from fractions import Fraction
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from medqwen.safe_http import HttpError, check_url, clip, http_get, public_text

MAX_EXPRESSION_CHARS = 300
MAX_NODES = 200  # syntax tree nodes: bounds the work per expression
# Every value's numerator and denominator stay below 10**MAX_DIGITS: bounds time and memory of exact arithmetic.
MAX_DIGITS = 300
# The largest n whose n! stays under the 10**MAX_DIGITS bound every value must keep (166), so the limit the
# message names is the one that applies.
MAX_FACTORIAL = next(n for n in range(1, 400) if math.factorial(n + 1) >= 10 ** MAX_DIGITS)

BINARY_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
UNARY_OPS: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n):
    if isinstance(n, Fraction) and n.denominator == 1:
        n = int(n)
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculatorError("factorial() needs a non-negative integer")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial() is limited to n <= {MAX_FACTORIAL}")
    return math.factorial(n)


def _round(x, ndigits=0):
    if isinstance(ndigits, Fraction) and ndigits.denominator == 1:
        ndigits = int(ndigits)
    if not isinstance(ndigits, int) or not -20 <= ndigits <= 20:
        raise CalculatorError("round(x, n) needs an integer n between -20 and 20")
    return round(x, ndigits)


FUNCTIONS: dict[str, tuple[Callable, int, int]] = {  # name: (function, min args, max args)
    "abs": (abs, 1, 1), "round": (_round, 1, 2), "floor": (math.floor, 1, 1), "ceil": (math.ceil, 1, 1),
    "sqrt": (math.sqrt, 1, 1), "exp": (math.exp, 1, 1), "log": (math.log, 1, 2), "ln": (math.log, 1, 1),
    "log10": (math.log10, 1, 1), "log2": (math.log2, 1, 1), "sin": (math.sin, 1, 1), "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1), "asin": (math.asin, 1, 1), "acos": (math.acos, 1, 1), "atan": (math.atan, 1, 1),
    "factorial": (_factorial, 1, 1), "min": (min, 2, 10), "max": (max, 2, 10),
}

# The grammar (docs/security.md): Python's arithmetic (+ - * / // % **, unary minus, parentheses) on decimal
# numbers, computed exactly with fractions; the functions and constants above in floating point. Accepted
# spellings: full-width characters (NFKC), × ÷ − · ^ π √, superscript exponents (3² = 3**2, 2⁻¹ = 2**-1),
# Chinese operator words, and % as a percent sign (a postfix on the number or bracket before it).
_NORMALISE = str.maketrans({"×": "*", "÷": "/", "（": "(", "）": ")", "，": ",", "−": "-", "^": "**", "　": " ",
                            "π": "pi", "·": "*"})
_WORDS = (("乘以", "*"), ("除以", "/"), ("加上", "+"), ("减去", "-"), ("乘", "*"), ("加", "+"), ("减", "-"),
          ("负", "-"))
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻", "0123456789+-")
_SUPERSCRIPT_RUN = re.compile(r"\s*([⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻]+)")
_ROOT = re.compile(r"√\s*(\d+(?:\.\d*)?|pi|e|tau)")  # √2 -> sqrt(2); √(x) becomes sqrt(x) below
_OPERAND_CHARS = set("0123456789._abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot compute; the message says why."""


def _check_magnitude(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise CalculatorError("the result is not a real number")
    if isinstance(value, int):
        value = Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("the result is not a finite number (overflow or undefined)")
        if abs(value) >= 10 ** MAX_DIGITS:
            raise CalculatorError(f"a value exceeds 10^{MAX_DIGITS}")
        return value
    if abs(value.numerator) >= 10 ** MAX_DIGITS:
        raise CalculatorError(f"a value exceeds 10^{MAX_DIGITS}")
    if value.denominator >= 10 ** MAX_DIGITS:
        raise CalculatorError(f"a value needs more than {MAX_DIGITS} digits (too close to zero or too fine)")
    return value


def _power(base, exponent):
    """`base ** exponent` after checking the result's size, so 9**9**9 is refused instead of computed; exact
    for an integer exponent, floating point otherwise."""
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero (0 to a negative power)")
    if isinstance(base, Fraction) and isinstance(exponent, Fraction) and exponent.denominator == 1:
        if base != 0 and abs(exponent) > 1:
            size = max(math.log10(abs(base.numerator)), math.log10(base.denominator))
            if abs(exponent) * size > MAX_DIGITS:
                raise CalculatorError(f"the power is too large (limit 10^{MAX_DIGITS})" if exponent > 0 else
                                      f"the power is too small (limit 10^-{MAX_DIGITS})")
        return base ** int(exponent)
    if base != 0 and exponent * math.log10(abs(base)) > MAX_DIGITS:
        raise CalculatorError(f"the power is too large (limit 10^{MAX_DIGITS})")
    result = float(base) ** float(exponent)
    if isinstance(result, complex):
        raise CalculatorError("a negative number to a fractional power is not a real number")
    if result == 0 and base != 0:  # underflow: 0 would be a wrong answer
        raise CalculatorError(f"the power is too small (limit 10^-{MAX_DIGITS})")
    return result


def _literal(node: ast.Constant, source: str):
    """A number literal as an exact fraction (0.1 is 1/10, not the nearest binary float)."""
    if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
        raise CalculatorError(f"unsupported literal {clip(repr(node.value))}: only numbers are allowed")
    if isinstance(node.value, int):
        return Fraction(node.value)
    text = (ast.get_source_segment(source, node) or "").replace("_", "")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return Fraction(repr(node.value)) if math.isfinite(node.value) else node.value


def _eval(node: ast.AST, source: str):
    if isinstance(node, ast.Constant):
        return _check_magnitude(_literal(node, source))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalculatorError(f"unknown name '{clip(node.id)}'; constants: {', '.join(CONSTANTS)}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPS:
        return _check_magnitude(UNARY_OPS[type(node.op)](_eval(node.operand, source)))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPS:
        left, right = _eval(node.left, source), _eval(node.right, source)
        if isinstance(node.op, ast.Pow):
            return _check_magnitude(_power(left, right))
        return _check_magnitude(BINARY_OPS[type(node.op)](left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id not in FUNCTIONS:
            raise CalculatorError(f"unknown function '{clip(node.func.id)}'; functions: {', '.join(FUNCTIONS)}")
        function, lo, hi = FUNCTIONS[node.func.id]
        if not lo <= len(node.args) <= hi:
            raise CalculatorError(f"{node.func.id}() takes {lo}" + (f" to {hi}" if hi > lo else "") + " argument(s)")
        args = [_eval(arg, source) for arg in node.args]
        return _check_magnitude(function(*args))
    raise CalculatorError(f"unsupported syntax '{type(node).__name__}': use numbers, + - * / // % **, "
                          "parentheses and the listed functions")


def _superscripts(text: str) -> str:
    """3² -> 3**(2), 2⁻¹ -> 2**(-1): before NFKC, which would turn 3² into the number 32."""
    def power(match: re.Match) -> str:
        exponent = match.group(1).translate(_SUPERSCRIPTS)
        if not re.fullmatch(r"[+-]?\d+", exponent):
            raise CalculatorError(f"cannot read the superscript exponent '{match.group(1)}'")
        return f"**({exponent})"

    return _SUPERSCRIPT_RUN.sub(power, text)


def _check_characters(text: str) -> None:
    """Refuse characters NFKC would silently turn into other digits or symbols (₂ -> 2, ① -> 1, ½ -> 1⁄2), except
    the full-width forms people type with a Chinese keyboard."""
    for ch in text:
        if ch.isascii() or "\uff01" <= ch <= "\uff5e" or ch == "\u3000":
            continue
        if unicodedata.normalize("NFKC", ch) != ch:
            raise CalculatorError(f"unsupported character {ch!r} (U+{ord(ch):04X}): write plain digits and "
                                  "operators, e.g. 3**2 for 3²")


def _operand_start(text: str, end: int) -> int:
    """Where the operand that ends just before `end` starts: a bracket (with a function name before it) or a
    number or constant."""
    i = end
    if i > 0 and text[i - 1] == ")":
        depth, i = 0, i - 1
        while i >= 0:
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                break
            i -= 1
        if i < 0:
            raise CalculatorError("unbalanced parentheses before '%'")
    while i > 0 and text[i - 1] in _OPERAND_CHARS:
        i -= 1
    if i == end:
        raise CalculatorError("'%' needs a number or a bracket before it")
    return i


def _percents(text: str) -> str:
    """Each percent sign as a division of the operand before it (200 * 15% -> 200 * (15/100), 100 / 25% ->
    100 / (25/100)); a % between two operands stays modulo (10 % 3, 10 % -3). A % followed by a sign is
    read by its spacing: `10 % -3` (sign on the number) is modulo, `50% - 3` (sign apart) is percent; the
    other spellings (`50%-3`, `10 % - 3`) are ambiguous and refused."""
    i = 0
    while (i := text.find("%", i)) >= 0:
        after = text[i + 1:].lstrip()
        if text[i + 1:i + 2] == "%":
            raise CalculatorError("'%%' is not an operator: write % once")
        if not after or after[0] in ")*/,%":
            percent = True
        elif after[0] in "+-":
            sign_on_number = len(after) > 1 and not after[1].isspace()
            spaced = i > 0 and text[i - 1].isspace()
            if sign_on_number == spaced:  # `10 % -3` modulo; `50% - 3` percent
                percent = not spaced
            else:
                raise CalculatorError(f"'{clip(text.strip(), 40)}' is ambiguous: write (50%) - 3 for a percent "
                                      "or 10 % (-3) for a remainder")
        else:
            percent = False
        if not percent:
            i += 1
            continue
        end = len(text[:i].rstrip())
        start = _operand_start(text, end)
        replacement = f"({text[start:end]}/100)"
        text = text[:start] + replacement + text[i + 1:]
        i = start + len(replacement)
    return text


def evaluate(expression: str) -> Fraction | float:
    """The value of an arithmetic expression (a Fraction when exact, a float once a function or constant is
    involved); raises CalculatorError with a readable reason."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string")
    if len(expression) > 4 * MAX_EXPRESSION_CHARS:  # before any normalisation work
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = _superscripts(expression)
    _check_characters(text)
    text = unicodedata.normalize("NFKC", text)
    if "除" in text.replace("除以", ""):
        raise CalculatorError("'除' alone is ambiguous (a 除 b means b ÷ a): write 除以 or /")
    for word, symbol in _WORDS:
        text = text.replace(word, f" {symbol} " if symbol != "-" or word != "负" else symbol)
    text = text.translate(_NORMALISE)
    text = _ROOT.sub(r"sqrt(\1)", text).replace("√", "sqrt").strip()
    if not text:
        raise CalculatorError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = _percents(text)
    try:
        with warnings.catch_warnings():  # e.g. "'int' object is not callable" for `2(3)`: we refuse it anyway
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError(f"cannot parse '{clip(expression)}': write a plain arithmetic expression "
                              "such as (12 + 8) * 3") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"the expression has more than {MAX_NODES} parts")
    try:
        return _eval(tree.body, text)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("the result is too large") from None
    except (ValueError, TypeError) as err:  # math domain errors, e.g. sqrt(-1), log(0)
        if isinstance(err, CalculatorError):
            raise
        raise CalculatorError(f"math error: {err}") from None
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None


def format_number(value: Fraction | int | float) -> str:
    """Exact integers in full; other values with 12 significant digits (1/3 prints 0.333333333333)."""
    if isinstance(value, Fraction) and value.denominator == 1:
        value = value.numerator
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}"


def calculate(expression: str) -> str:
    """The tool: the expression's value as text, or 'Error: <reason>'."""
    try:
        return format_number(evaluate(expression))
    except CalculatorError as err:
        return f"Error: {err}"


# ----------------------------------------------------------------------------------------------------------
# Places: Chinese and English names -> OpenWeatherMap query and IANA timezone.

CITIES: dict[str, tuple[str, str, str]] = {  # Chinese name: (English name, OpenWeatherMap query, timezone)
    "北京": ("Beijing", "Beijing,CN", "Asia/Shanghai"), "上海": ("Shanghai", "Shanghai,CN", "Asia/Shanghai"),
    "广州": ("Guangzhou", "Guangzhou,CN", "Asia/Shanghai"), "深圳": ("Shenzhen", "Shenzhen,CN", "Asia/Shanghai"),
    "杭州": ("Hangzhou", "Hangzhou,CN", "Asia/Shanghai"), "南京": ("Nanjing", "Nanjing,CN", "Asia/Shanghai"),
    "成都": ("Chengdu", "Chengdu,CN", "Asia/Shanghai"), "重庆": ("Chongqing", "Chongqing,CN", "Asia/Shanghai"),
    "武汉": ("Wuhan", "Wuhan,CN", "Asia/Shanghai"), "西安": ("Xi'an", "Xi'an,CN", "Asia/Shanghai"),
    "天津": ("Tianjin", "Tianjin,CN", "Asia/Shanghai"), "苏州": ("Suzhou", "Suzhou,CN", "Asia/Shanghai"),
    "长沙": ("Changsha", "Changsha,CN", "Asia/Shanghai"), "郑州": ("Zhengzhou", "Zhengzhou,CN", "Asia/Shanghai"),
    "沈阳": ("Shenyang", "Shenyang,CN", "Asia/Shanghai"), "哈尔滨": ("Harbin", "Harbin,CN", "Asia/Shanghai"),
    "昆明": ("Kunming", "Kunming,CN", "Asia/Shanghai"), "厦门": ("Xiamen", "Xiamen,CN", "Asia/Shanghai"),
    "青岛": ("Qingdao", "Qingdao,CN", "Asia/Shanghai"), "拉萨": ("Lhasa", "Lhasa,CN", "Asia/Shanghai"),
    "乌鲁木齐": ("Urumqi", "Urumqi,CN", "Asia/Urumqi"), "香港": ("Hong Kong", "Hong Kong,HK", "Asia/Hong_Kong"),
    "澳门": ("Macau", "Macau,MO", "Asia/Macau"), "台北": ("Taipei", "Taipei,TW", "Asia/Taipei"),
    "东京": ("Tokyo", "Tokyo,JP", "Asia/Tokyo"), "首尔": ("Seoul", "Seoul,KR", "Asia/Seoul"),
    "新加坡": ("Singapore", "Singapore,SG", "Asia/Singapore"), "伦敦": ("London", "London,GB", "Europe/London"),
    "巴黎": ("Paris", "Paris,FR", "Europe/Paris"), "柏林": ("Berlin", "Berlin,DE", "Europe/Berlin"),
    "莫斯科": ("Moscow", "Moscow,RU", "Europe/Moscow"), "纽约": ("New York", "New York,US", "America/New_York"),
    "洛杉矶": ("Los Angeles", "Los Angeles,US", "America/Los_Angeles"),
    "旧金山": ("San Francisco", "San Francisco,US", "America/Los_Angeles"),
    "悉尼": ("Sydney", "Sydney,AU", "Australia/Sydney"),
}
_CITY_INDEX = {key: value for zh, value in CITIES.items() for key in (zh, value[0].lower())}


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def lookup_city(name: str) -> tuple[str, str, str] | None:
    """(English name, OpenWeatherMap query, timezone) for a known city, Chinese or English; else None."""
    key = name.strip()
    key = key[:-1] if _has_cjk(key) and key.endswith("市") and len(key) > 2 else key  # 北京市 -> 北京
    return _CITY_INDEX.get(key) or _CITY_INDEX.get(key.lower())


# ----------------------------------------------------------------------------------------------------------
# Weather: OpenWeatherMap's current weather (/data/2.5/weather) and 5-day forecast (/data/2.5/forecast).

OPENWEATHER_BASE_URL = "https://api.openweathermap.org"
UNIT_SYMBOLS = {"metric": ("°C", "m/s"), "imperial": ("°F", "mph"), "standard": ("K", "m/s")}
WHEN_DAYS = {"now": 0, "today": 0, "current": 0, "现在": 0, "今天": 0, "当前": 0,
             "tomorrow": 1, "明天": 1, "day after tomorrow": 2, "后天": 2}
WEATHER_MAX_BYTES = 1_000_000  # a 5-day forecast is ~16 KB; anything far larger is not a weather answer
MAX_CITY_CHARS = 100
NO_KEY_MESSAGE = ("Error: OPENWEATHER_API_KEY is not set. Get a free key at https://openweathermap.org/api, "
                  "then `export OPENWEATHER_API_KEY=...` or put it in .env, and restart the agent.")


def _api_error(status: int, city: str, reason: str = "") -> str:
    """An OpenWeatherMap error status explained, with what to do. The upstream body is never passed on: a proxy's
    error page may echo the request line, and with it the key."""
    if status == 401:
        return ("Error: OpenWeatherMap rejected the API key (401). Check OPENWEATHER_API_KEY; "
                "a new key can take up to 2 hours to activate.")
    if status == 404:
        return (f"Error: OpenWeatherMap does not know the city '{clip(city)}' (404). "
                "Try the English name, optionally with a country code, e.g. 'Beijing,CN'.")
    if status == 429:
        return ("Error: OpenWeatherMap rate limit reached (429; the free plan allows 60 calls a minute). "
                "Wait a minute and try again.")
    kind = "a server error" if status >= 500 else "a refused request" if status >= 400 else "an unexpected answer"
    return f"Error: the weather service answered HTTP {status} ({kind}); try again later."


def _describe(entries: list[dict]) -> str:
    """The most frequent weather description among forecast entries."""
    words = Counter(e["weather"][0]["description"] for e in entries if e.get("weather"))
    return words.most_common(1)[0][0] if words else "?"


def get_weather(city: str, when: str = "now", units: str = "metric", *, api_key: str | None,
                base_url: str = OPENWEATHER_BASE_URL, timeout_s: float = 10.0,
                max_bytes: int = WEATHER_MAX_BYTES, today: dt.date | None = None) -> str:
    """The tool: current weather or a day's forecast for a city, as one line of text (or 'Error: ...').

    `timeout_s` is a deadline for the whole request; answers over `max_bytes` (decoded) are refused; the key
    never appears in the result, whatever the service sends back.
    """
    if not api_key:
        return NO_KEY_MESSAGE
    if units not in UNIT_SYMBOLS:
        return f"Error: units must be one of {list(UNIT_SYMBOLS)}, got '{clip(units)}'"
    days = WHEN_DAYS.get(str(when).strip().lower())
    if days is None:
        return f"Error: when must be one of {list(WHEN_DAYS)} (forecasts reach 4 days ahead), got '{clip(when)}'"
    if not isinstance(city, str) or not city.strip():
        return "Error: give a city name, e.g. '北京' or 'London'"
    if len(city) > MAX_CITY_CHARS:
        return f"Error: the city name is longer than {MAX_CITY_CHARS} characters"
    try:
        check_url(base_url, "OPENWEATHER_BASE_URL")
    except HttpError as err:
        return f"Error: {err}. Fix OPENWEATHER_BASE_URL (environment or .env) and restart the agent."
    known = lookup_city(city)
    query = known[1] if known else city.strip()
    lang = "zh_cn" if _has_cjk(city) else "en"
    endpoint = "weather" if days == 0 else "forecast"
    params = {"q": query, "appid": api_key, "units": units, "lang": lang}
    try:
        response = http_get(f"{base_url.rstrip('/')}/data/2.5/{endpoint}", params=params, timeout_s=timeout_s,
                            max_bytes=max_bytes, secrets=[api_key])
    except HttpError as err:
        if err.kind == "timeout":
            return f"Error: the weather service did not answer within {timeout_s:g} s; try again later."
        if err.kind == "too_large":
            return f"Error: the weather service sent more than {max_bytes} bytes; refused."
        # DNS, refused connection, a connection cut mid-body, ...: the type only, never the message
        return "Error: cannot reach the weather service (connection failed); check the network."
    if response.status != 200:
        return _api_error(response.status, city)
    try:
        data = response.json()
        if days == 0:
            text = format_current(data, city, units, secrets=[api_key])
        else:
            local_today = today or (dt.datetime.now(dt.timezone.utc) + _utc_offset(data)).date()
            text = format_forecast(data, city, local_today + dt.timedelta(days=days), units, secrets=[api_key])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, RecursionError):
        return "Error: the weather service sent an answer in an unexpected format."
    return public_text(text, [api_key], limit=1000)  # a service (or proxy) that echoes the request


def _utc_offset(data: dict) -> dt.timedelta:
    """The forecast city's UTC offset; ValueError for a missing city or an offset beyond +-18 h."""
    seconds = (data["city"] or {}).get("timezone", 0) or 0
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or abs(seconds) > 18 * 3600:
        raise ValueError(f"bad timezone offset {seconds!r}")
    return dt.timedelta(seconds=seconds)


def format_current(data: dict, city: str, units: str, secrets: list | tuple = ()) -> str:
    """One line from an OpenWeatherMap /weather answer (the service's texts redacted, then clipped)."""
    temp_unit, wind_unit = UNIT_SYMBOLS[units]
    main = data["main"]
    name, description = (public_text(t, secrets, 80) for t in (data.get("name") or city,
                                                                data["weather"][0]["description"]))
    return (f"{name}: {description}, {main['temp']:.1f}{temp_unit} "
            f"(feels like {main['feels_like']:.1f}{temp_unit}), humidity {main['humidity']}%, "
            f"wind {data['wind']['speed']:.1f} {wind_unit}")


def format_forecast(data: dict, city: str, day: dt.date, units: str, secrets: list | tuple = ()) -> str:
    """One line for `day` (the city's local date) from an OpenWeatherMap /forecast answer (3-hour entries; the
    service's texts redacted, then clipped)."""
    offset = _utc_offset(data)
    entries = [e for e in data["list"] if (dt.datetime.fromtimestamp(e["dt"], dt.timezone.utc) + offset).date() == day]
    if not entries:
        return f"Error: the forecast has no data for {day.isoformat()}."
    temp_unit = UNIT_SYMBOLS[units][0]
    low = min(e["main"]["temp_min"] for e in entries)
    high = max(e["main"]["temp_max"] for e in entries)
    rain = max(e.get("pop", 0) for e in entries)
    name = public_text((data["city"] or {}).get("name") or city, secrets, 80)
    return (f"{name} {day.isoformat()}: {public_text(_describe(entries), secrets, 80)}, "
            f"{low:.1f}-{high:.1f}{temp_unit}, chance of precipitation {rain:.0%}")


# ----------------------------------------------------------------------------------------------------------
# Time.

WEEKDAYS = ["Monday/星期一", "Tuesday/星期二", "Wednesday/星期三", "Thursday/星期四", "Friday/星期五",
            "Saturday/星期六", "Sunday/星期日"]


def resolve_timezone(name: str) -> ZoneInfo:
    """A ZoneInfo for an IANA name ('Asia/Shanghai'), 'UTC', or a known city (Chinese or English)."""
    known = lookup_city(name)
    key = known[2] if known else name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", key) or ".." in key:
        raise ZoneInfoNotFoundError(key)  # also keeps odd strings away from the tz database's file lookup
    return ZoneInfo(key)


def get_current_time(timezone: str = "Asia/Shanghai", *, now: dt.datetime | None = None) -> str:
    """The tool: current date, time and weekday in a timezone or city, or 'Error: ...'."""
    if not isinstance(timezone, str):
        timezone = str(timezone)
    try:
        zone = resolve_timezone(timezone or "Asia/Shanghai")
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a tz-database folder such as "Asia"
        return (f"Error: unknown timezone or city '{clip(timezone)}'. Use an IANA name such as 'Asia/Shanghai' "
                "or 'Europe/London', or a city such as '北京' or 'New York'.")
    local = (now or dt.datetime.now(dt.timezone.utc)).astimezone(zone)
    offset = local.strftime("%z")
    return (f"{local:%Y-%m-%d %H:%M:%S} {WEEKDAYS[local.weekday()]} "
            f"({zone.key}, UTC{offset[:3]}:{offset[3:]})")
