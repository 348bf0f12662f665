"""LLM-as-judge: reply parsing, and a real HTTP server in this process that speaks OpenAI's chat completions API."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medqwen.evaluate.judge import (
    CRITERIA,
    EndpointUnavailableError,
    JudgeParseError,
    make_judge,
    parse_judge_reply,
    summarize_judgements,
)

PORTS = range(8400, 8500)


# ---- parsing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [
    '{"relevance": 4, "correctness": 3, "safety": 5, "reason": "ok"}',
    'Here is my grade:\n```json\n{"relevance": 4, "correctness": 3, "safety": 5, "reason": "ok"}\n```',
    'Scores {"Relevance": "4", "Correctness": 3.0, "Safety": 5} as asked.',
    '{"note": "draft"} then {"relevance": 4, "correctness": 3, "safety": 5}',
])
def test_parse_judge_reply_finds_the_score_object(reply):
    scores = parse_judge_reply(reply)
    assert [scores[c] for c in CRITERIA] == [4, 3, 5]


@pytest.mark.parametrize("reply, message", [
    ("", "empty"),
    ("I think it is a good answer, 4/5.", "no JSON object"),
    ('{"relevance": 4, "correctness": 3}', "missing 'safety'"),
    ('{"relevance": 9, "correctness": 3, "safety": 5}', "outside 1-5"),
    ('{"relevance": "high", "correctness": 3, "safety": 5}', "not an integer"),
    ('{"relevance": 4.5, "correctness": 3, "safety": 5}', "not an integer"),
])
def test_parse_judge_reply_rejects_what_is_not_a_valid_grade(reply, message):
    with pytest.raises(JudgeParseError, match=message):
        parse_judge_reply(reply)


# ---- a local OpenAI-compatible server --------------------------------------------------------------------


class FakeOpenAI(ThreadingHTTPServer):
    """Answers /v1/models and /v1/chat/completions; `replies` are the texts, in order (int: an HTTP status;
    float: answer after that many seconds)."""

    def __init__(self, port: int):
        super().__init__(("127.0.0.1", port), Handler)
        self.replies: list = []
        self.requests: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, payload: dict):
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
            pass

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "judge-model", "object": "model"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request["authorization"] = self.headers.get("Authorization")
        self.server.requests.append(request)
        # Queued replies in order; with none queued, echo the last message (order-free for concurrent requests).
        reply = self.server.replies.pop(0) if self.server.replies else request["messages"][-1]["content"]
        if isinstance(reply, float):  # a slow judge: answer only after this many seconds
            __import__("time").sleep(reply)
            reply = '{"relevance": 5, "correctness": 5, "safety": 5}'
        if isinstance(reply, int):
            self._send(reply, {"error": {"message": "server error", "type": "server_error"}})
            return
        self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": request["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": reply}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    pytest.fail("no free port in 8400-8499")


@pytest.fixture
def server():
    for port in PORTS:
        try:
            srv = FakeOpenAI(port)
            break
        except OSError:  # taken by another test run
            continue
    else:
        pytest.fail("no free port in 8400-8499")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def test_judge_grades_through_the_server_and_counts_failures(server, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-test-secret")
    url = f"http://127.0.0.1:{server.server_port}/v1"
    judge = make_judge(url, "judge-model", max_retries=0)
    judge.check_reachable()
    server.replies = ['```json\n{"relevance": 5, "correctness": 4, "safety": 2, "reason": "no referral"}\n```',
                      "Looks fine to me!", 500]
    results = [judge.grade("胸痛伴气短怎么办？", "立即就医。", f"answer {i}") for i in range(3)]

    assert results[0]["safety"] == 2 and results[0]["reason"] == "no referral"
    assert results[1]["error"] == "malformed" and results[1]["raw"] == "Looks fine to me!"
    assert results[2]["error"] == "http_500"
    summary = summarize_judgements(results)
    assert summary["judge_n"] == 1 and summary["judge_failed"] == 2 and summary["judge_safety"] == 2.0
    assert summary["judge_failures"] == {"malformed": 1, "http_500": 1}

    first = server.requests[0]
    assert first["model"] == "judge-model" and first["temperature"] == 0.0
    assert first["messages"][0]["role"] == "system" and "red-flag" in first["messages"][0]["content"].lower()
    assert "胸痛伴气短怎么办？" in first["messages"][1]["content"] and "answer 0" in first["messages"][1]["content"]
    assert first["authorization"] == "Bearer sk-test-secret"


def test_judge_timeout_is_counted_not_fatal(server):
    judge = make_judge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", max_retries=0, timeout_s=0.3)
    server.replies = [1.0, '{"relevance": 3, "correctness": 3, "safety": 3}']
    assert judge.grade("q", "r", "a")["error"] == "timeout"
    assert judge.grade("q", "r", "a")["safety"] == 3  # the next answer is graded normally


def test_judge_endpoint_down_is_a_clear_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = make_judge(url, "judge-model", max_retries=0, timeout_s=5)
    with pytest.raises(EndpointUnavailableError, match=f"judge endpoint {url} is not reachable"):
        judge.check_reachable()


def test_eval_run_with_judge_end_to_end(server, tiny_model_dir, tmp_path, monkeypatch):
    """The judge's verdicts land in predictions.jsonl and metrics.json; its key never lands on disk."""
    from medqwen.configlib import UserError
    from medqwen.evaluate.config import EvalConfig
    from medqwen.evaluate.run import main, run_eval
    from tests.test_eval import CONVERSATIONS, write_jsonl

    monkeypatch.setenv("JUDGE_API_KEY", "sk-test-secret")
    data = write_jsonl(tmp_path / "d.jsonl", CONVERSATIONS)
    url = f"http://127.0.0.1:{server.server_port}/v1"
    cfg = EvalConfig(model=str(tiny_model_dir), data_path=str(data), split_run=None,
                     eval_split="all", limit=3, max_new_tokens=4, identity_probes=False, judge_base_url=url,
                     judge_model="judge-model", judge_api_key="sk-test-secret", output_dir=str(tmp_path / "out"))
    server.replies = ['{"relevance": 2, "correctness": 2, "safety": 4}', "not json", '{"relevance": 4, '
                      '"correctness": 3, "safety": 5}']
    summary = run_eval(cfg)
    assert summary["judge_n"] == 2 and summary["judge_failed"] == 1 and summary["judge_relevance"] == 3.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [("error" in r["judge"]) for r in rows] == [False, True, False]
    for name in ("config.yaml", "metrics.json", "predictions.jsonl", "report.md"):
        assert "sk-test-secret" not in (tmp_path / "out" / name).read_text(encoding="utf-8")

    server.shutdown()  # down before generation starts: the run stops at once and names the URL
    server.server_close()
    with pytest.raises(UserError, match=f"judge endpoint {url} is not reachable"):
        main(cfg)


def test_answers_from_an_openai_compatible_server(server, tmp_path):
    """--backend openai: answers come from chat completions (here: the question echoed); no model is loaded."""
    from medqwen.data import IDENTITY_PROBES
    from medqwen.evaluate.config import EvalConfig
    from medqwen.evaluate.metrics import rouge_l
    from medqwen.evaluate.run import run_eval
    from tests.test_eval import CONVERSATIONS, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", CONVERSATIONS)
    cfg = EvalConfig(model=str(tmp_path / "not-needed"), backend="openai", served_model="lora-adapter",
                     base_url=f"http://127.0.0.1:{server.server_port}/v1", data_path=str(data), split_run=None,
                     eval_split="all", limit=4, assistant_name="你", output_dir=str(tmp_path / "out"))
    summary = run_eval(cfg)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    heldout = [r for r in rows if r["kind"] == "heldout"]
    assert [r["prediction"] for r in heldout] == [c[1]["content"] for c in CONVERSATIONS[:4]]
    assert summary["rouge_l"] == pytest.approx(sum(rouge_l(r["question"], r["reference"]) for r in heldout) / 4)
    assert summary["identity_rate"] == pytest.approx(sum("你" in q for q in IDENTITY_PROBES) / len(IDENTITY_PROBES))
    assert "ref_loss" not in summary and all(r["model"] == "lora-adapter" for r in server.requests)
