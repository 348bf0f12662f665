"""medqwen/web_ui.py's agent events as the page draws them: no browser, no server (so not marked slow)."""

from medqwen.web_config import WebConfig


def test_a_tool_call_with_wrong_argument_types_shows_a_tool_error_box():
    """The agent loop of medqwen.agent.agent with a model that sends `expression` as a list: the error goes back to the
    model and the page draws it as a tool-error box; the loop then finishes."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from medqwen.agent.agent import build_agent
    from medqwen.web_ui import Backend, run_agent, tool_boxes

    class ToolModel(GenericFakeChatModel):
        _stream = BaseChatModel._stream  # whole messages (the fake's own stream drops tool calls)

        def bind_tools(self, tools, **kwargs):
            return self

    llm = ToolModel(messages=iter([
        AIMessage("", tool_calls=[{"name": "calculator", "args": {"expression": [12, 8]}, "id": "call_1"}]),
        AIMessage("I could not compute that.")]))
    agent_cfg = Backend(WebConfig()).agent_config("lora-adapter", None)
    events = list(run_agent(agent_cfg, build_agent(agent_cfg, llm=llm), [], "帮我计算 (12 + 8) * 3"))
    boxes = [box for kind, data in events if kind == "message" for box in tool_boxes(data)]
    titles = [b["metadata"]["title"] for b in boxes]
    assert titles == ["tool call: calculator", "tool error: calculator"], titles
    assert "expression" in boxes[1]["content"]
    assert events[-1][0] == "done"
