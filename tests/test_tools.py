"""The agent's tools: the calculator (fuzzed), OpenWeatherMap weather against a local fake, the time tool."""

import ast
import builtins
import contextlib
import datetime as dt
import functools
import json
import math
import threading
import time
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock
from urllib.parse import parse_qs, urlparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqwen.agent.tools import calculate, get_current_time, get_weather, lookup_city

# ----------------------------------------------------------------------------------------------------------
# Calculator

REFERENCE = [
    ("(12 + 8) * 3", "60"), ("1 + 2 * 3", "7"), ("2 ** 10", "1024"), ("2^10", "1024"), ("7 // 2", "3"),
    ("7 % 3", "1"), ("-7 // 2", "-4"), ("10 / 4", "2.5"), ("0.1 + 0.2", "0.3"), ("-(-3)", "3"), ("-2 ** 2", "-4"),
    ("(-2) ** 2", "4"), ("2 ** -1", "0.5"), ("3 × 4 ÷ 2", "6"), ("（1 + 2）* 3", "9"), ("sqrt(16)", "4"),
    ("sqrt(2)", "1.41421356237"), ("abs(-5.5)", "5.5"), ("round(3.14159, 2)", "3.14"), ("floor(2.7)", "2"),
    ("ceil(2.1)", "3"), ("log(100, 10)", "2"), ("log10(1000)", "3"), ("ln(e)", "1"), ("log2(8)", "3"),
    ("sin(0)", "0"), ("cos(pi)", "-1"), ("factorial(5)", "120"), ("max(3, 9, 4)", "9"), ("min(3, 9, 4)", "3"),
    ("2 * pi", "6.28318530718"), ("1e3 + 1", "1001"), ("123456789 * 987654321", "121932631112635269"),
    ("10 ** 299 // 10 ** 298", "10"), ("3.5e-3 * 2", "0.007"), ("(1 + 2) * (3 + 4) / 7", "3"),
    # full-width digits and operators, π, √, 乘/除, % as percent (no operand after it) or modulo (between two)
    ("１２＋３", "15"), ("（１２＋８）＊３", "60"), ("2 * π", "6.28318530718"), ("√16", "4"),
    ("√(9 + 16)", "5"), ("6乘7", "42"), ("8 除以 2", "4"), ("3乘以4", "12"), ("50%", "0.5"), ("200 * 15%", "30"),
    ("10 % 3", "1"), ("(1 + 1)% * 100", "2"), ("factorial(166) // factorial(165)", "166"),
    # wrong numbers at 10514c8 (NFKC read 3² as 32; % became /100 without brackets or took a sign for a percent)
    ("3²", "9"), ("2⁻¹", "0.5"), ("-3²", "-9"), ("(1 + 2)²", "9"), ("100 / 25%", "400"), ("10 % -3", "-2"),
    ("-10 % 3", "2"), ("50% - 3", "-2.5"), ("0.3 // 0.1", "3"), ("0.1 + 0.2 - 0.3", "0"), ("10 减 3", "7"),
    ("负3 乘 2", "-6"), ("1 加上 2", "3"), ("50% % 3", "0.5"),
]

REFUSED = [
    ("1 / 0", "division by zero"), ("5 % 0", "division by zero"), ("0 ** -1", "division by zero"),
    ("9 ** 9 ** 9", "too large"), ("10 ** 300", "exceeds"), ("1e308 * 10", "exceeds"),
    ("factorial(1000)", "limited"), ("(-8) ** 0.5", "not a real number"), ("sqrt(-1)", "math error"),
    ("__import__('os').system('true')", "unsupported syntax"), ("__import__('os')", "unknown function"),
    ("open('/etc/passwd')", "unknown function"),
    ("(1).__class__", "unsupported syntax"), ("[1, 2]", "unsupported syntax"), ("lambda: 1", "unsupported syntax"),
    ("x + 1", "unknown name"), ("True + 1", "unsupported literal"), ("'a' * 3", "unsupported literal"),
    ("1 if 1 else 2", "unsupported syntax"), ("2 < 3", "unsupported syntax"), ("", "empty"),
    ("1 +", "cannot parse"), ("% 5", "cannot parse"), ("(" * 400 + "1" + ")" * 400, "longer than"),
    ("-" * 250 + "1", "more than"), ("round(1.5, 2.5)", "integer n"), ("max(1)", "argument"),
    ("sqrt(x=4)", "unsupported syntax"), ("1j", "unsupported literal"), ("2π", "cannot parse"),
    ("factorial(167)", "limited to n <= 166"), ("1" * 5000, "longer than"),
    ("3₂", "unsupported character"), ("①+1", "unsupported character"), ("6除3", "ambiguous"),
    ("50%-3", "ambiguous"), ("10 % - 3", "ambiguous"), ("2 ** -2000", "too small"), ("5%%3", "'%%'"),
]


@pytest.mark.parametrize("expression,expected", REFERENCE)
def test_calculator_reference(expression, expected):
    assert calculate(expression) == expected


@pytest.mark.parametrize("expression,reason", REFUSED)
def test_calculator_refuses_with_reason(expression, reason):
    result = calculate(expression)
    assert result.startswith("Error: ") and reason in result, result


@contextlib.contextmanager
def no_code_execution():
    """eval/exec explode and compile may only build syntax trees (what ast.parse needs)."""
    real_compile = builtins.compile

    def boom(*args, **kwargs):
        raise AssertionError("eval/exec called")

    def ast_only_compile(source, filename, mode, flags=0, *args, **kwargs):
        assert flags & ast.PyCF_ONLY_AST, "compile() asked for a code object"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    with mock.patch.object(builtins, "eval", boom), mock.patch.object(builtins, "exec", boom), \
            mock.patch.object(builtins, "compile", ast_only_compile):
        yield


def calculate_without_eval(expression: str) -> str:
    with no_code_execution():
        return calculate(expression)


def test_the_guard_itself_catches_code_execution():
    with no_code_execution():
        for attempt in (lambda: eval("1"), lambda: exec("x = 1"), lambda: compile("1", "<s>", "eval")):
            with pytest.raises(AssertionError):
                attempt()
        assert calculate("2 * 3") == "6"  # while ast.parse still works


# A grammar of expressions the calculator accepts, and of hostile ones it must refuse safely.
numbers = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(-1e6, 1e6, allow_nan=False).map(repr),
                    st.sampled_from(["pi", "e", "0", "0.0", "1e308", "9" * 50]))
atoms = st.recursive(
    numbers,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "^"]), inner).map(" ".join),
        inner.map(lambda x: f"({x})"), inner.map(lambda x: f"-{x}"),
        st.tuples(st.sampled_from(["sqrt", "abs", "log", "exp", "sin", "factorial", "round", "floor"]), inner)
        .map(lambda t: f"{t[0]}({t[1]})"),
    ),
    max_leaves=12,
)
hostile = st.sampled_from(["__import__", "os", "system", "open", "eval", "exec", "lambda", ".", "[", "]", "{", "}",
                           "'", '"', ":", ";", "=", "__class__", "__subclasses__", "globals", "\\", "\x00", "if",
                           "for", "import", "@", "~", "<<", ">>", "&", "|", "<", "==", "not", "and", "(", ")"])


def _is_valid_result(out: str) -> bool:
    if out.startswith("Error: "):
        return True
    float(out)  # a number, printed finitely
    return not math.isinf(float(out)) and not math.isnan(float(out))


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_calculator_fuzz_text(text):
    assert _is_valid_result(calculate_without_eval(text))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(atoms)
def test_calculator_fuzz_grammar(expression):
    start = time.perf_counter()
    assert _is_valid_result(calculate_without_eval(expression))
    # Bounded work, not a tight timing: an unbounded power such as 9**9**9 would run for hours, while a loaded
    # CI machine can stall any call for a fraction of a second.
    assert time.perf_counter() - start < 5


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(atoms, hostile), min_size=1, max_size=8).map(" ".join))
def test_calculator_fuzz_hostile(expression):
    assert _is_valid_result(calculate_without_eval(expression))


# The calculator against exact arithmetic: hypothesis builds a tree of exact operations, writes it in the
# calculator's documented grammar (docs/security.md) with random spellings (full-width digits and operators,
# Chinese operator words, superscript exponents, % as percent and as modulo, `a % -b`), and the answer must be
# the tree's value computed with fractions, or a refusal where that value is undefined or out of range.
FULLWIDTH = str.maketrans("0123456789.", "０１２３４５６７８９．")
SPELLINGS = {"+": ["+", "＋", "加", "加上"], "-": ["-", "－", "−", "减", "减去"],
             "*": ["*", "×", "＊", "·", "乘", "乘以"], "/": ["/", "÷", "／", "除以"], "//": ["//", "／／"],
             "%": ["%", "％"], "**": ["**", "^", "＊＊"]}
SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
BOUND = 10 ** 280  # beyond it (up to the calculator's 10**300) either a refusal or the right answer will do


class Undefined(Exception):
    """Division by zero, 0 to a negative power, or a value beyond BOUND: the calculator may refuse."""


def _exact(tree) -> Fraction:
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind in ("neg", "pct"):
        value = _exact(tree[1])
        value = -value if kind == "neg" else value / 100
    else:
        a, b = _exact(tree[1]), _exact(tree[2])
        if kind in ("/", "//", "%") and b == 0 or kind == "**" and a == 0 and b < 0:
            raise Undefined(kind)
        if kind == "**" and a != 0 and abs(b) * max(math.log10(abs(a.numerator)), math.log10(a.denominator)) > 280:
            raise Undefined("too large")
        value = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                 "//": lambda: Fraction(a // b), "%": lambda: a % b, "**": lambda: a ** int(b)}[kind]()
    if abs(value.numerator) >= BOUND or value.denominator >= BOUND:
        raise Undefined("beyond the bound")
    return value


def _number_text(value: Fraction, rng) -> str:
    text = str(value.numerator) if value.denominator == 1 else f"{float(value):g}"
    return text.translate(FULLWIDTH) if rng.random() < 0.3 else text


def _render(tree, rng) -> str:
    """Text for `tree` in the documented grammar: binary operations bracketed, a negative number after an
    operator written bare (`a % -3`), percent glued to a number or bracket, superscripts on small powers."""
    kind = tree[0]
    left, right = ("（", "）") if rng.random() < 0.2 else ("(", ")")
    if kind == "num":
        return _number_text(tree[1], rng)
    if kind == "neg":
        inner = tree[1]
        body = _render(inner, rng) if inner[0] == "num" else f"{left}{_render(inner, rng)}{right}"
        return rng.choice(["-", "－", "−", "负"]) + body
    if kind == "pct":
        inner = tree[1]
        body = _render(inner, rng) if inner[0] == "num" else f"{left}{_render(inner, rng)}{right}"
        return body + rng.choice(["%", "％"])
    a, b = tree[1], tree[2]
    a_text = _render(a, rng) if a[0] in ("num", "pct") else f"{left}{_render(a, rng)}{right}"
    bare_negative = b[0] == "neg" and b[1][0] == "num"
    if kind == "**" and (b[0] == "num" or bare_negative) and rng.random() < 0.4 and not a_text.endswith(("%", "％")):
        exponent = -b[1][1] if bare_negative else b[1]
        return f"{left}{a_text}{str(exponent.numerator).translate(SUPERSCRIPT)}{right}"
    b_text = _render(b, rng) if b[0] in ("num", "pct") or bare_negative else f"{left}{_render(b, rng)}{right}"
    return f"{left}{a_text} {rng.choice(SPELLINGS[kind])} {b_text}{right}"


def _trees():
    decimals = st.builds(lambda n, places: Fraction(n, 10 ** places), st.integers(0, 5000),
                         st.sampled_from([0, 0, 1, 2]))
    leaf = decimals.map(lambda v: ("num", v))
    exponent = st.integers(-3, 4).map(lambda k: ("num", Fraction(k)) if k >= 0 else ("neg", ("num", Fraction(-k))))

    def extend(inner):
        binary = st.tuples(st.sampled_from(["+", "-", "*", "/", "//", "%"]), inner, inner)
        return st.one_of(binary, st.tuples(st.just("**"), inner, exponent), st.tuples(st.just("neg"), inner),
                         st.tuples(st.just("pct"), inner))

    return st.recursive(leaf, extend, max_leaves=8)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_trees(), st.randoms(use_true_random=False))
def test_calculator_equals_exact_arithmetic_or_refuses(tree, rng):
    """At 10514c8 this finds `10 % -3` -> -2.9, `3²` -> 32, `100 / 25%` -> 0.04 and float errors such as
    0.3 // 0.1 -> 2 within seconds."""
    text = _render(tree, rng)
    out = calculate_without_eval(text)
    try:
        value = _exact(tree)
    except Undefined:
        assert out.startswith("Error: ") or abs(Fraction(out)) >= BOUND, (text, out)
        return
    assert not out.startswith("Error: "), (text, out, value)
    if value.denominator == 1:
        assert out == str(value.numerator), (text, out, value)
    else:
        assert abs(Fraction(out) - value) <= abs(value) * Fraction(1, 10 ** 11), (text, out, value)


def test_the_exact_oracle_itself():
    """The oracle's reading of a few trees, checked by hand (the property test is only as good as it)."""
    n = lambda v: ("num", Fraction(v))  # noqa: E731
    assert _exact(("%", n(10), ("neg", n(3)))) == -2
    assert _exact(("/", n(100), ("pct", n(25)))) == 400
    assert _exact(("**", n(3), n(2))) == 9
    assert _exact(("//", n(Fraction(3, 10)), n(Fraction(1, 10)))) == 3


# ----------------------------------------------------------------------------------------------------------
# Weather, against a local server that speaks OpenWeatherMap's /data/2.5 API.

NOW = dt.datetime(2026, 11, 29, 4, 0, tzinfo=dt.timezone.utc)  # 12:00 in Beijing (UTC+8)


def _forecast_entry(when: dt.datetime, temp: float, description: str, pop: float) -> dict:
    return {"dt": int(when.timestamp()), "main": {"temp": temp, "temp_min": temp - 1, "temp_max": temp + 1,
                                                   "humidity": 40}, "weather": [{"description": description}],
            "wind": {"speed": 2.0}, "pop": pop}


class FakeOpenWeather(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: dict):
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        FakeOpenWeather.requests.append({"path": url.path, **q})
        if q.get("appid") != "good-key":
            return self._send(401, {"cod": 401, "message": "Invalid API key."})
        if q["q"] == "SlowCity":
            time.sleep(2)
        if q["q"] == "BusyCity":
            return self._send(429, {"cod": 429, "message": "rate limit"})
        if q["q"] not in ("Beijing,CN", "Reykjavik"):
            return self._send(404, {"cod": "404", "message": "city not found"})
        if url.path == "/data/2.5/weather":
            return self._send(200, {"name": q["q"].split(",")[0], "weather": [{"description": "晴"}],
                                    "main": {"temp": 5.24, "feels_like": 2.0, "humidity": 30}, "wind": {"speed": 3.4},
                                    "timezone": 28800, "cod": 200})
        tomorrow = dt.datetime(2026, 11, 30, tzinfo=dt.timezone(dt.timedelta(hours=8)))
        entries = [_forecast_entry(tomorrow + dt.timedelta(hours=h), t, d, p)
                   for h, t, d, p in [(-3, 9.0, "晴", 0.0), (2, 1.0, "小雨", 0.6), (8, 6.0, "小雨", 0.3),
                                      (14, 4.0, "多云", 0.1), (26, 20.0, "晴", 0.0)]]
        return self._send(200, {"cod": "200", "list": entries, "city": {"name": "Beijing", "timezone": 28800}})


@pytest.fixture(scope="module")
def weather_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenWeather)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_weather_current_in_chinese(weather_url):
    out = get_weather("北京", api_key="good-key", base_url=weather_url)
    assert out == "Beijing: 晴, 5.2°C (feels like 2.0°C), humidity 30%, wind 3.4 m/s"
    last = FakeOpenWeather.requests[-1]
    assert last["path"] == "/data/2.5/weather" and last["q"] == "Beijing,CN" and last["lang"] == "zh_cn"
    assert last["units"] == "metric"


def test_weather_tomorrow_aggregates_the_local_day(weather_url):
    out = get_weather("北京市", when="明天", units="imperial", api_key="good-key", base_url=weather_url,
                      today=dt.date(2026, 11, 29))
    # Only the three entries inside 2026-11-30 Beijing time count: min 1-1, max 6+1, most frequent "小雨".
    assert out == "Beijing 2026-11-30: 小雨, 0.0-7.0°F, chance of precipitation 60%"
    assert FakeOpenWeather.requests[-1]["path"] == "/data/2.5/forecast"


def test_weather_english_city_passes_through(weather_url):
    assert get_weather("Reykjavik", api_key="good-key", base_url=weather_url).startswith("Reykjavik: ")
    assert FakeOpenWeather.requests[-1]["lang"] == "en"


@pytest.mark.parametrize("city,key,expected", [
    ("北京", "bad-key", "rejected the API key (401)"),
    ("Atlantis", "good-key", "does not know the city 'Atlantis' (404)"),
    ("BusyCity", "good-key", "rate limit reached (429"),
])
def test_weather_api_errors_are_explained(weather_url, city, key, expected):
    out = get_weather(city, api_key=key, base_url=weather_url)
    assert out.startswith("Error: ") and expected in out
    assert key not in out  # the key never appears in what the model (and the log) sees


def test_weather_timeout(weather_url):
    start = time.perf_counter()
    out = get_weather("SlowCity", api_key="good-key", base_url=weather_url, timeout_s=0.3)
    assert out == "Error: the weather service did not answer within 0.3 s; try again later."
    assert time.perf_counter() - start < 1.5


def test_weather_without_key_or_server():
    assert "OPENWEATHER_API_KEY is not set" in get_weather("北京", api_key=None)
    out = get_weather("北京", api_key="k", base_url="http://127.0.0.1:9", timeout_s=1)  # nothing listens on 9
    assert out.startswith("Error: cannot reach the weather service")
    assert get_weather("北京", when="next year", api_key="k").startswith("Error: when must be one of")
    assert get_weather("北京", units="kelvin", api_key="k").startswith("Error: units must be one of")


# ----------------------------------------------------------------------------------------------------------
# Time


@pytest.mark.parametrize("where,expected", [
    ("Asia/Shanghai", "2026-11-29 12:00:00 Sunday/星期日 (Asia/Shanghai, UTC+08:00)"),
    ("北京", "2026-11-29 12:00:00 Sunday/星期日 (Asia/Shanghai, UTC+08:00)"),
    ("纽约", "2026-11-28 23:00:00 Saturday/星期六 (America/New_York, UTC-05:00)"),
    ("london", "2026-11-29 04:00:00 Sunday/星期日 (Europe/London, UTC+00:00)"),
    ("UTC", "2026-11-29 04:00:00 Sunday/星期日 (UTC, UTC+00:00)"),
])
def test_time_in_zones_and_cities(where, expected):
    assert get_current_time(where, now=NOW) == expected


@pytest.mark.parametrize("where", ["Mars", "../../etc/passwd", "", "Asia/Nowhere", "a" * 200])
def test_time_unknown_zone_is_explained(where):
    out = get_current_time(where, now=NOW)
    assert out.startswith("Error: unknown timezone or city") or (where == "" and "Asia/Shanghai" in out)


def test_city_lookup_both_languages():
    assert lookup_city("上海") == lookup_city("Shanghai") == lookup_city("shanghai ")
    assert lookup_city("Gotham") is None


# ----------------------------------------------------------------------------------------------------------
# Hostile weather services: the key never comes back, deadlines are total, sizes are capped.

KEY = "sk-weather-SECRET-1234567890"


@functools.lru_cache(maxsize=None)
def gzip_bomb(inflated_mb: int = 100) -> bytes:
    """~100 KB of gzip that inflates to `inflated_mb` MB of zeros (built in 1 MB steps: the server stays small)."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(inflated_mb)) + packer.flush()


class HostileWeather(BaseHTTPRequestHandler):
    """Answers by city name: an error page echoing the request line, a trickled body, a huge or gzip-bomb body,
    a forecast with a null city or a huge timezone, a connection cut mid-body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _raw(self, status, body: bytes, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if not any(k == "Content-Length" for k, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        city = parse_qs(urlparse(self.path).query)["q"][0]
        if city == "Echo":
            return self._raw(502, f"502 Bad Gateway: GET {self.path} HTTP/1.1".encode())
        if city == "Trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
            return None
        if city == "Huge":
            return self._raw(200, b"[" + b"1," * 1_500_000 + b"1]")
        if city == "Bomb":
            return self._raw(200, gzip_bomb(), [("Content-Encoding", "gzip")])
        if city == "Cut":
            self.send_response(200)
            self.send_header("Content-Length", "10000")
            self.end_headers()
            self.wfile.write(b'{"name": "Cut", ')
            self.wfile.flush()
            self.connection.shutdown(2)
            return None
        tz = {"NullCity": 0, "HugeTz": 10 ** 20, "BadTz": "x"}.get(city, 0)
        city_obj = None if city == "NullCity" else {"name": city, "timezone": tz}
        return self._raw(200, json.dumps({"list": [], "city": city_obj}).encode())


@pytest.fixture(scope="module")
def hostile_url():
    gzip_bomb()  # built once before the clock starts (compressing 100 MB takes about a second)
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileWeather)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_error_body_echoing_the_key_never_reaches_the_model(hostile_url):
    out = get_weather("Echo", api_key=KEY, base_url=hostile_url)
    assert out.startswith("Error: the weather service answered HTTP 502") and KEY not in out and "appid" not in out


def test_weather_deadline_is_total_not_per_read(hostile_url):
    start = time.perf_counter()
    out = get_weather("Trickle", api_key=KEY, base_url=hostile_url, timeout_s=1.0)
    assert "did not answer within 1 s" in out
    assert time.perf_counter() - start < 2.5  # a per-read timeout would take 10 s here


@pytest.mark.parametrize("city", ["Huge", "Bomb"])
def test_weather_size_cap_holds_for_plain_and_gzip_bodies(hostile_url, city):
    """The 3 MB plain body and the 100 MB gzip bomb are refused with at most ~1 MB allocated (tracemalloc's peak,
    in a fresh process: this one holds the server, and ru_maxrss keeps the peak of every earlier test)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import json, sys, tracemalloc\nfrom medqwen.agent.tools import get_weather\n"
            "get_weather('Echo', api_key=sys.argv[2], base_url=sys.argv[3])\n"  # lazy imports before the count
            "tracemalloc.start()\n"
            "out = get_weather(sys.argv[1], api_key=sys.argv[2], base_url=sys.argv[3], max_bytes=100_000,\n"
            "                  timeout_s=5)\n"
            "print(json.dumps([out, tracemalloc.get_traced_memory()[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, city, KEY, hostile_url], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, peak = json.loads(proc.stdout.splitlines()[-1])
    assert out == "Error: the weather service sent more than 100000 bytes; refused."
    assert peak < 1_000_000, peak  # bytes: the cap is 100 KB (+ a 64 KB step); the answers are 3 MB and 100 MB


@pytest.mark.parametrize("city", ["NullCity", "HugeTz", "BadTz"])
def test_forecast_with_broken_city_is_an_error_text(hostile_url, city):
    out = get_weather(city, when="tomorrow", api_key=KEY, base_url=hostile_url)
    assert out.startswith("Error: the ") and ("unexpected format" in out or "no data for" in out), out


def test_connection_cut_mid_body_is_an_error_text(hostile_url):
    assert get_weather("Cut", api_key=KEY, base_url=hostile_url).startswith("Error: cannot reach the weather")


@pytest.mark.parametrize("url,ok", [
    ("http://127.0.0.1:9", True), ("http://localhost:9", True), ("http://[::1]:9", True),
    ("https://api.example.org", True), ("http://evil.example.com", False), ("http://10.0.0.1", False),
    ("ftp://127.0.0.1", False), ("not a url", False), ("http://127.0.0.1:port", False),
])
def test_weather_base_url_must_be_https_or_loopback(url, ok):
    from medqwen.safe_http import HttpError, check_url

    if ok:
        assert check_url(url) == url
    else:
        with pytest.raises(HttpError):
            check_url(url)
        out = get_weather("北京", api_key=KEY, base_url=url)
        assert out.startswith("Error: ") and "OPENWEATHER_BASE_URL" in out and KEY not in out


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_dotenv_in_the_current_folder_cannot_redirect_the_key(tmp_path, monkeypatch, scheme, capsys):
    """A `.env` in the working folder (someone else's folder) names an attacker's host for both the weather
    service and the model server while the user's keys are in the environment: no request may go there, over
    https either. At 10514c8 the https URL was taken and the key sent to it."""
    from medqwen.agent.agent import build_tools, served_models
    from medqwen.agent.config import AgentConfig
    from medqwen.configlib import parse_config

    attacker = f"{scheme}://attacker.example.net"
    (tmp_path / ".env").write_text(f"OPENWEATHER_BASE_URL={attacker}\nVLLM_BASE_URL={attacker}/v1\n"
                                   "MODEL_NAME=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    for var in ("OPENWEATHER_BASE_URL", "VLLM_BASE_URL", "MODEL_NAME"):
        monkeypatch.delenv(var, raising=False)  # also undoes what load_dotenv sets in this process
    monkeypatch.setenv("OPENWEATHER_API_KEY", KEY)
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    cfg = parse_config(AgentConfig, [])
    assert cfg.served_model == "from-dotenv"  # the file is read: only its endpoints are refused
    assert "attacker" not in cfg.weather_base_url and "attacker" not in cfg.base_url
    assert "ignored" in capsys.readouterr().err
    hosts = []

    def record(self, request, **kwargs):
        hosts.append(request.url.host)
        raise httpx.ConnectError("offline test")

    import httpx

    with mock.patch("httpx.Client.send", record):
        next(t for t in build_tools(cfg) if t.name == "get_weather").invoke({"city": "北京"})
        with contextlib.suppress(Exception):
            served_models(cfg, timeout_s=2)
    assert hosts and "attacker.example.net" not in hosts


def test_httpx_request_log_carries_no_key(weather_url, caplog):
    import logging

    with caplog.at_level(logging.DEBUG):
        get_weather("北京", api_key=KEY, base_url=weather_url)
        import httpx

        httpx.get(f"{weather_url}/data/2.5/weather?q=x&appid={KEY}", timeout=5)  # any httpx user is covered
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTP Request" in logged and KEY not in logged


def test_userinfo_in_a_url_is_never_saved(tmp_path):
    from medqwen.agent.config import AgentConfig
    from medqwen.configlib import format_config, save_config

    cfg = AgentConfig(base_url="http://user:s3cr3t-pass@127.0.0.1:8001/v1",
                      weather_base_url=f"https://me:{KEY}@api.openweathermap.org")
    text = save_config(cfg, tmp_path / "config.yaml").read_text() + format_config(cfg)
    assert "s3cr3t-pass" not in text and KEY not in text and "127.0.0.1:8001/v1" in text


def test_time_tool_on_a_tz_folder_and_a_huge_input():
    out = get_current_time("Asia")
    assert out.startswith("Error: unknown timezone") and "/usr" not in out and "zoneinfo" not in out
    assert len(get_current_time("x" * 100_000)) < 400
