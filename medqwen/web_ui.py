"""The web page: chat, the agent with its tool calls, RAG with cited sources, and two served models side by side.

    app = build_app(WebConfig())          # a gradio.Blocks; agent/web_ui.py launches it on 127.0.0.1:7860
    app.launch(server_name=cfg.host, server_port=cfg.port)

Everything talks to the OpenAI-compatible server of agent/serve_vllm.sh (the base model and, with
`--lora-modules`, the adapter as `lora-adapter`). Agent mode is medqwen.agent.agent (the same tools and middleware as
agent/agent.py); RAG mode is medqwen.rag (the store, retrieval and prompt of agent/rag_query.py). The API key stays
in this process: the page only ever receives model text, tool calls and passages.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
from typing import Any, Callable, Iterator

from medqwen.agent.agent import AgentServerError, ask, build_agent, served_models
from medqwen.agent.config import AgentConfig
from medqwen.client import server_label
from medqwen.configlib import resolve_config
from medqwen.rag import Retriever, StoreError, open_client, open_collection
from medqwen.rag.answer import GenerationError, OpenAIAnswerer, build_messages
from medqwen.rag.config import RagConfig
from medqwen.web_config import WebConfig

START_HINT = "Start it with `make web` (server and page) or `bash agent/serve_vllm.sh`, then press Check server."
DISCLAIMER = ("**Note:** this assistant gives general health information for learning and research. It is no "
              "substitute for a doctor: for a diagnosis or treatment, see a qualified physician.")
AUTO = "(the model decides)"
TOOL_NAMES = ["calculator", "get_weather", "get_current_time"]
SOURCE_COLUMNS = ["#", "source id", "title", "score", "text"]


class WebError(RuntimeError):
    """A problem the page shows to the user as a message (server down, unknown model, bad input)."""


def server_down_message(cfg: WebConfig) -> str:
    return f"The model server is down: nothing answers at {server_label(cfg.base_url)}. {START_HINT}"


def list_models(cfg: WebConfig) -> list[str]:
    """The served model names, or WebError saying the server is down and how to start it."""
    try:
        return served_models(AgentConfig(base_url=cfg.base_url, api_key=cfg.api_key), timeout_s=5.0)
    except AgentServerError:
        raise WebError(server_down_message(cfg)) from None


def default_models(cfg: WebConfig, served: list[str]) -> tuple[str, str]:
    """(base, adapter) for compare mode: the configured names, else the first non-adapter and the adapter."""
    others = [m for m in served if m != cfg.served_model]
    base = cfg.base_model or (others[0] if others else cfg.served_model)
    return base, cfg.served_model


def check_input(cfg: WebConfig, message: str | None, model: str | None, served: list[str]) -> str:
    """The message stripped, or WebError for an empty or oversized message or a model the server lacks."""
    text = (message or "").strip()
    if not text:
        raise WebError("Type a question first: the message is empty.")
    if len(text) > cfg.max_input_chars:
        raise WebError(f"The message has {len(text):,} characters; the limit is {cfg.max_input_chars:,} "
                       f"(--max_input_chars). Shorten it and send it again.")
    if model not in served:
        raise WebError(f"The server does not serve a model named {model!r}; it serves {served}. Pick one of those "
                       f"(start the server with the adapter: `bash agent/serve_vllm.sh`).")
    return text


def stream_reply(cfg: WebConfig, model: str, messages: list[dict]) -> Iterator[str]:
    """The reply text so far, growing as the server streams it (medqwen.rag.answer.OpenAIAnswerer.stream);
    WebError with a clear message on failure."""
    answerer = OpenAIAnswerer(RagConfig(base_url=cfg.base_url, api_key=cfg.api_key, timeout_s=cfg.timeout_s,
                                        served_model=model, max_new_tokens=cfg.max_tokens,
                                        temperature=cfg.temperature))
    try:
        yield from answerer.stream(messages)
    except GenerationError as err:
        try:
            list_models(cfg)
        except WebError as down:  # the server went away: say so, with the command that starts it
            raise down from None
        raise WebError(str(err)) from None


def chat_history_messages(history: list[dict]) -> list[dict]:
    """OpenAI messages from the page's history (tool boxes, which carry metadata, and notices are left out)."""
    return [{"role": m["role"], "content": _content_text(m.get("content"))} for m in history
            if m.get("role") in ("user", "assistant") and not m.get("metadata")
            and not _content_text(m.get("content")).startswith(NOTICE)]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


NOTICE = "Notice: "


def note(text: str) -> dict:
    """A message in the conversation that is not model text (errors, warnings); never sent back to the model."""
    return {"role": "assistant", "content": NOTICE + text}


def end_with_notice(history: list[dict], text: str) -> None:
    """Close a streamed answer with a notice: a partial reply stays visible, followed by the notice that says it
    is incomplete (a cut answer never looks complete); an empty placeholder is replaced by the notice."""
    if history and history[-1].get("role") == "assistant" and _content_text(history[-1].get("content")).strip():
        history.append(note(f"the answer above is incomplete: {text}"))
    elif history and history[-1].get("role") == "assistant":
        history[-1] = note(text)
    else:
        history.append(note(text))


# ----------------------------------------------------------------------------------------------------------
# Agent mode: medqwen.agent.agent.ask in a worker thread; its messages become tool boxes.


def tool_boxes(message: Any) -> list[dict]:
    """Collapsible boxes for one agent message: a call box per tool call, a result (or error) box per result."""
    from langchain_core.messages import AIMessage, ToolMessage

    boxes = []
    if isinstance(message, AIMessage):
        for call in message.tool_calls:
            args = json.dumps(call.get("args"), ensure_ascii=False)
            boxes.append({"role": "assistant", "content": f"```json\n{args}\n```",
                          "metadata": {"title": f"tool call: {call['name']}", "status": "done"}})
        for bad in getattr(message, "invalid_tool_calls", []) or []:
            boxes.append({"role": "assistant", "content": f"{bad.get('args')}\n\n{bad.get('error') or ''}".strip(),
                          "metadata": {"title": f"invalid tool call: {bad.get('name')}", "status": "done"}})
    elif isinstance(message, ToolMessage):
        failed = getattr(message, "status", "success") == "error"
        title = f"tool error: {message.name}" if failed else f"tool result: {message.name}"
        boxes.append({"role": "assistant", "content": _content_text(message.content),
                      "metadata": {"title": title, "status": "done"}})
    return boxes


def run_agent(agent_cfg: AgentConfig, agent, lc_history: list, question: str) -> Iterator[tuple[str, Any]]:
    """Events of one agent answer: ("text", chunk), ("message", message), then ("done", history) or
    ("error", text). The agent runs in a thread so the page can stream while it works."""
    events: queue.Queue = queue.Queue()

    def work():
        try:
            history = ask(agent, agent_cfg, lc_history, question, write=lambda s: events.put(("text", s)),
                          on_message=lambda m: events.put(("message", m)))
            events.put(("done", history))
        except AgentServerError as err:
            events.put(("error", str(err)))
        except Exception as err:  # noqa: BLE001 -- shown on the page; the page keeps running
            events.put(("error", f"{type(err).__name__}: {err}"))

    threading.Thread(target=work, daemon=True).start()
    while True:
        kind, data = events.get()
        yield kind, data
        if kind in ("done", "error"):
            return


# ----------------------------------------------------------------------------------------------------------
# The page


class Backend:
    """What the page's event handlers call; holds the config (and so the API key) on the server side."""

    def __init__(self, cfg: WebConfig):
        self.cfg = cfg
        self._agents: dict[tuple, Any] = {}
        self._retriever = None
        self.rag_cfg = resolve_config(RagConfig, environ=dict(os.environ))
        self.rag_cfg = dataclasses.replace(self.rag_cfg, persist_dir=cfg.persist_dir, top_k=cfg.top_k,
                                           base_url=cfg.base_url, api_key=cfg.api_key, timeout_s=cfg.timeout_s)

    def served(self) -> list[str]:
        return list_models(self.cfg)

    def agent_config(self, model: str, force_tool: str | None) -> AgentConfig:
        c = self.cfg
        return AgentConfig(base_url=c.base_url, served_model=model, api_key=c.api_key, temperature=c.temperature,
                           top_p=c.top_p, max_tokens=c.max_tokens, timeout_s=c.timeout_s,
                           force_tool=None if force_tool in (None, "", AUTO) else force_tool)

    def agent(self, agent_cfg: AgentConfig):
        key = (agent_cfg.served_model, agent_cfg.force_tool)
        if key not in self._agents:
            self._agents[key] = build_agent(agent_cfg)
        return self._agents[key]

    def retriever(self):
        if self._retriever is None:
            try:
                retriever = Retriever(open_collection(open_client(self.rag_cfg), self.rag_cfg), self.rag_cfg)
            except StoreError as err:
                raise WebError(f"No knowledge store: {err}") from None
            if len(retriever) == 0:
                raise WebError(f"The knowledge store at {self.rag_cfg.persist_dir} is empty: build it with "
                               f"`python agent/embedding.py --input data/rag_sample`.")
            self._retriever = retriever
        return self._retriever


def source_rows(hits: list) -> list[list]:
    return [[n, h.source_id, h.metadata.get("title", ""), round(float(h.score), 4), h.document]
            for n, h in enumerate(hits, start=1)]


def build_app(cfg: WebConfig):
    """The Gradio page; nothing of `cfg` but model names reaches the browser."""
    import gradio as gr

    backend = Backend(cfg)

    def status() -> tuple:
        try:
            served = backend.served()
        except WebError as err:
            return (f"**Server down.** {err}", gr.update(), gr.update(), gr.update(), gr.update(), gr.update())
        base, adapter = default_models(cfg, served)
        pick = adapter if adapter in served or not served else served[0]
        text = f"**Server up.** {server_label(cfg.base_url)} serves: " + ", ".join(f"`{m}`" for m in served)
        if cfg.served_model not in served:
            text += (f". The adapter `{cfg.served_model}` is not among them: serve it with "
                     f"`ADAPTER_PATH=<run folder> bash agent/serve_vllm.sh`.")
        choose = lambda value: gr.update(choices=served, value=value)  # noqa: E731
        return (text, choose(pick), choose(pick), choose(pick), choose(base), choose(adapter))

    def admit(history: list, message: str | None, *models: str) -> str | None:
        """The checked message, or None after a notice in `history` (server down, bad input, unknown model)."""
        try:
            served = backend.served()
            return [check_input(cfg, message, model, served) for model in models][0]
        except WebError as err:
            history.append(note(str(err)))
            return None

    # -- chat
    def chat(message, history, model):
        history = list(history or [])
        text = admit(history, message, model)
        if text is None:
            yield history, gr.update()
            return
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
        messages += chat_history_messages(history) + [{"role": "user", "content": text}]
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        yield history, ""
        try:
            for reply in stream_reply(cfg, model, messages):
                history[-1] = {"role": "assistant", "content": reply}
                yield history, gr.update()
        except WebError as err:
            end_with_notice(history, str(err))
            yield history, gr.update()

    # -- agent
    def agent_turn(message, history, lc_history, model, force_tool):
        history, lc_history = list(history or []), list(lc_history or [])
        text = admit(history, message, model)
        if text is None:
            yield history, lc_history, gr.update()
            return
        agent_cfg = backend.agent_config(model, force_tool)
        history.append({"role": "user", "content": text})
        yield history, lc_history, ""
        current = None  # index of the assistant text message being streamed
        for kind, data in run_agent(agent_cfg, backend.agent(agent_cfg), lc_history, text):
            if kind == "text":
                if current is None:
                    history.append({"role": "assistant", "content": ""})
                    current = len(history) - 1
                history[current] = {"role": "assistant", "content": history[current]["content"] + data}
            elif kind == "message":
                boxes = tool_boxes(data)
                if boxes:
                    if current is not None and not history[current]["content"].strip():
                        history.pop(current)
                    history.extend(boxes)
                    current = None
            elif kind == "done":
                lc_history = data
            else:
                history.append(note(data))
            yield history, lc_history, gr.update()

    # -- RAG
    def rag_turn(message, history, model):
        history = list(history or [])
        text = admit(history, message, model)
        if text is None:
            yield history, gr.update(), gr.update()
            return
        try:
            hits = backend.retriever().search(text, cfg.top_k)
        except WebError as err:
            history.append(note(str(err)))
            yield history, gr.update(), gr.update()
            return
        rows = source_rows(hits)
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        yield history, rows, ""
        try:
            for reply in stream_reply(cfg, model, build_messages(text, hits)):
                history[-1] = {"role": "assistant", "content": reply}
                yield history, rows, gr.update()
        except WebError as err:
            end_with_notice(history, str(err))
            yield history, rows, gr.update()

    # -- compare
    def compare(message, left, right, left_model, right_model):
        left, right = list(left or []), list(right or [])
        text = admit(left, message, left_model, right_model)
        if text is None:
            yield left, right, gr.update()
            return
        sides = [(left, left_model), (right, right_model)]
        requests = [chat_history_messages(h) + [{"role": "user", "content": text}] for h, _ in sides]
        for h, _ in sides:
            h += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        yield left, right, ""
        for index, update in _merge_streams([lambda m=m, r=r: stream_reply(cfg, m, r)
                                             for (_, m), r in zip(sides, requests)]):
            if isinstance(update, WebError):
                end_with_notice(sides[index][0], update.args[0])
            else:
                sides[index][0][-1] = {"role": "assistant", "content": update}
            yield left, right, gr.update()

    with gr.Blocks(title="medqwen assistant") as app:
        gr.Markdown("# medqwen assistant\nChat, tools, answers from the knowledge base with sources, and two "
                    "served models side by side.")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Row():
            status_md = gr.Markdown("…", elem_id="server-status")
            check = gr.Button("Check server", elem_id="check-server", scale=0)
        dropdown = lambda label, elem_id: gr.Dropdown(label=label, choices=[cfg.served_model],  # noqa: E731
                                                      value=cfg.served_model, allow_custom_value=True,
                                                      elem_id=elem_id)

        def conversation(name: str, placeholder: str, height: int = 420) -> tuple:
            """A chat panel: #NAME-bot, #NAME-input and the Send / Stop / Clear buttons."""
            bot = gr.Chatbot(elem_id=f"{name}-bot", height=height)
            box = gr.Textbox(placeholder=placeholder, show_label=False, elem_id=f"{name}-input")
            with gr.Row():
                buttons = [gr.Button(label, variant="primary" if label == "Send" else "secondary",
                                     elem_id=f"{name}-{label.lower()}") for label in ("Send", "Stop", "Clear")]
            return bot, box, *buttons

        with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
            chat_model = dropdown("Model", "chat-model")
            chat_bot, chat_box, chat_send, chat_stop, chat_clear = conversation("chat", "Ask a health question…")
        with gr.Tab("Agent", id="agent", elem_id="tab-agent"):
            with gr.Row():
                agent_model = dropdown("Model", "agent-model")
                force = gr.Dropdown([AUTO] + TOOL_NAMES, value=AUTO, label="First turn must call",
                                    elem_id="agent-force")
            agent_state = gr.State([])
            agent_bot, agent_box, agent_send, agent_stop, agent_clear = conversation("agent",
                                                                                     "帮我计算 (12 + 8) * 3")
        with gr.Tab("RAG", id="rag", elem_id="tab-rag"):
            rag_model = dropdown("Model", "rag-model")
            rag_bot, rag_box, rag_send, rag_stop, rag_clear = conversation("rag", "发热汗出恶风，脉浮缓，"
                                                                                  "应该用什么方？", height=320)
            rag_sources = gr.Dataframe(headers=SOURCE_COLUMNS, label="Retrieved passages (cited as [n])",
                                       wrap=True, elem_id="rag-sources", interactive=False)
        with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
            with gr.Row():
                left_model = dropdown("Left model (base)", "compare-left-model")
                right_model = dropdown("Right model (fine-tuned)", "compare-right-model")
            with gr.Row():
                left_bot = gr.Chatbot(elem_id="compare-left", height=420, label="left")
                right_bot = gr.Chatbot(elem_id="compare-right", height=420, label="right")
            cmp_box = gr.Textbox(placeholder="One question for both models", show_label=False,
                                 elem_id="compare-input")
            with gr.Row():
                cmp_send = gr.Button("Send to both", variant="primary", elem_id="compare-send")
                cmp_stop = gr.Button("Stop", elem_id="compare-stop")
                cmp_clear = gr.Button("Clear", elem_id="compare-clear")

        outputs = [status_md, chat_model, agent_model, rag_model, left_model, right_model]
        app.load(status, None, outputs)
        check.click(status, None, outputs)

        def wire(fn, inputs, outs, box, send, stop):
            events = [box.submit(fn, inputs, outs), send.click(fn, inputs, outs)]
            stop.click(None, None, None, cancels=events)

        wire(chat, [chat_box, chat_bot, chat_model], [chat_bot, chat_box], chat_box, chat_send, chat_stop)
        wire(agent_turn, [agent_box, agent_bot, agent_state, agent_model, force], [agent_bot, agent_state, agent_box],
             agent_box, agent_send, agent_stop)
        wire(rag_turn, [rag_box, rag_bot, rag_model], [rag_bot, rag_sources, rag_box], rag_box, rag_send, rag_stop)
        wire(compare, [cmp_box, left_bot, right_bot, left_model, right_model], [left_bot, right_bot, cmp_box],
             cmp_box, cmp_send, cmp_stop)
        chat_clear.click(lambda: [], None, chat_bot)
        agent_clear.click(lambda: ([], []), None, [agent_bot, agent_state])
        cmp_clear.click(lambda: ([], []), None, [left_bot, right_bot])
        rag_clear.click(lambda: ([], None), None, [rag_bot, rag_sources])
    return app


def _merge_streams(makers: list[Callable[[], Iterator[str]]]) -> Iterator[tuple[int, Any]]:
    """(index, text so far | WebError) from several streams at once, as each produces; ends when all have."""
    events: queue.Queue = queue.Queue()

    def pump(index, make):
        try:
            for text in make():
                events.put((index, text))
        except WebError as err:
            events.put((index, err))
        except Exception as err:  # noqa: BLE001 -- shown on the page beside the other side's answer
            events.put((index, WebError(f"{type(err).__name__}: {err}")))
        events.put((index, None))

    for index, make in enumerate(makers):
        threading.Thread(target=pump, args=(index, make), daemon=True).start()
    running = len(makers)
    while running:
        index, item = events.get()
        if item is None:
            running -= 1
        else:
            yield index, item


def launch(cfg: WebConfig, block: bool = True):
    """Serve the page on cfg.host:cfg.port (no share link unless cfg.share); returns the app."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine
    app = build_app(cfg)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, prevent_thread_lock=not block,
               ssr_mode=False, quiet=not block)
    return app
