"""run.py's config: chat with a model, optionally with a LoRA adapter."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import ModelChoiceFields, RunFields, SamplingFields, ThinkingFields, _f, like


@dataclass
class ChatConfig(SamplingFields, ThinkingFields, ModelChoiceFields):
    """run.py: chat with a model (optionally with a LoRA adapter)."""

    prompt: str | None = _f(None, "One-shot prompt; without it an interactive chat starts.")
    system: str | None = _f(None, "Optional system message.")
    max_new_tokens: int = _f(512, "Maximum tokens generated per reply (tokens).", at_least=1)
    seed: int = like(RunFields, "seed", help="Random seed for sampling.")
