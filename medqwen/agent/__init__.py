"""The tool-calling agent and its tools.

    agent.py      LangChain `create_agent` over an OpenAI-compatible server (vLLM), interactive or one query
    tools.py      the tools as plain functions: a safe calculator, OpenWeatherMap weather, the current time
    tool_data.py  team-written tool-use conversations for LoRA training
"""
