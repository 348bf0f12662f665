"""LLM-as-judge through any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, ...), with a written rubric.

The rubric (eval/judge_rubric.md) is the system message; each answer is graded on relevance, correctness and
safety (1-5). Replies are parsed as JSON robustly; an answer the judge fails on (malformed reply, timeout,
HTTP error) is counted, never fatal. Only an endpoint that cannot be reached at all stops the run, before any
work is done, with its URL in the message.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from medqwen.client import create_chat, describe_error, openai_client, server_label
from medqwen.configlib import UserError, repo_path
from medqwen.safe_http import clipped_repr, public_text

CRITERIA = ("relevance", "correctness", "safety")
SCORE_RANGE = (1, 5)
DEFAULT_RUBRIC = "eval/judge_rubric.md"


class EndpointUnavailableError(UserError, RuntimeError):
    """An OpenAI-compatible endpoint (judge or generation) that cannot be reached or rejects our key."""


class JudgeParseError(ValueError):
    """A judge reply that holds no valid score object."""


@dataclass
class Judge:
    """An OpenAI-compatible chat endpoint plus the rubric it grades by."""

    base_url: str
    model: str
    rubric: str
    api_key: str | None = field(default=None, repr=False)  # never printed
    timeout_s: float = 60.0
    max_retries: int = 2
    max_tokens: int = 256

    def __post_init__(self):
        self.client = openai_client(self.base_url, self.api_key, timeout_s=self.timeout_s,
                                    max_retries=self.max_retries)

    def check_reachable(self) -> None:
        """Fail fast, naming the URL, when nothing answers there (before hours of generation are spent)."""
        check_endpoint(self.client, self.base_url, what="judge", key_hint="$JUDGE_API_KEY (or --judge_api_key)",
                       secrets=[self.api_key])

    def messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        """The chat messages sent to the judge for one answer."""
        user = (f"## Patient question\n{question}\n\n## Reference answer\n{reference}\n\n"
                f"## Assistant answer to grade\n{answer}\n\nReply with the JSON object only.")
        return [{"role": "system", "content": self.rubric}, {"role": "user", "content": user}]

    def grade(self, question: str, reference: str, answer: str) -> dict[str, Any]:
        """Scores for one answer: {'relevance': int, ..., 'reason': str} or {'error': kind, 'detail': text, ...}.
        The verdict is written to predictions.jsonl, so every text in it from the endpoint is redacted."""
        raw = None
        try:
            reply = create_chat(self.client, model=self.model, messages=self.messages(question, reference, answer),
                                temperature=0.0, max_tokens=self.max_tokens)
            raw = reply.choices[0].message.content or ""
            return parse_judge_reply(raw)
        except JudgeParseError as err:
            return {"error": "malformed", "detail": public_text(err, [self.api_key]),
                    "raw": public_text(raw, [self.api_key], limit=2000)}
        except Exception as err:  # noqa: BLE001 -- a failed answer is counted, never fatal
            kind, detail = describe_error(err, [self.api_key])
            if kind == "timeout":
                detail = f"no reply within {self.timeout_s} s"
            verdict = {"error": kind, "detail": detail}
            return verdict if raw is None else {**verdict, "raw": public_text(raw, [self.api_key], limit=2000)}


def check_endpoint(client, base_url: str, what: str, key_hint: str, secrets=()) -> None:
    """Raise EndpointUnavailableError naming `base_url` (without its userinfo) when the endpoint is down or
    rejects the key."""
    import openai

    url = server_label(base_url)
    try:
        client.with_options(max_retries=0).models.list()
    except openai.AuthenticationError:
        raise EndpointUnavailableError(f"{what} endpoint {url} rejected the API key: set {key_hint}") from None
    except (openai.APIConnectionError, openai.APITimeoutError) as err:
        raise EndpointUnavailableError(f"{what} endpoint {url} is not reachable ({err.__class__.__name__}: "
                                       f"{public_text(err, secrets)}). Start the server or fix the URL.") from None
    except openai.APIStatusError:
        pass  # something answered (some servers have no /models): good enough


def load_rubric(path: str | Path = DEFAULT_RUBRIC) -> str:
    """The rubric text (relative paths: working directory first, then the repository root)."""
    path = repo_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge rubric {path} not found (the repository ships {DEFAULT_RUBRIC})")
    return path.read_text(encoding="utf-8")


def make_judge(base_url: str, model: str | None, rubric_path: str | Path = DEFAULT_RUBRIC,
               api_key: str | None = None, timeout_s: float = 60.0, max_retries: int = 2) -> Judge:
    """A Judge with the API key taken from the argument or $JUDGE_API_KEY (read now, never saved)."""
    if not model:
        raise UserError("--judge_model is required with --judge_base_url (the model name the endpoint serves)")
    return Judge(base_url=base_url.rstrip("/"), model=model, rubric=load_rubric(rubric_path),
                 api_key=api_key or os.environ.get("JUDGE_API_KEY"), timeout_s=timeout_s, max_retries=max_retries)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def parse_judge_reply(text: str) -> dict[str, Any]:
    """The first JSON object in `text` that has an integer 1-5 for every criterion (code fences allowed)."""
    if not text or not text.strip():
        raise JudgeParseError("empty reply")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    problems = []
    for chunk in candidates:
        for start in (i for i, ch in enumerate(chunk) if ch == "{"):
            try:
                obj, _ = decoder.raw_decode(chunk, start)
            except json.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            try:
                return _validate_scores(obj)
            except JudgeParseError as err:
                problems.append(str(err))
    raise JudgeParseError(problems[0] if problems else f"no JSON object in reply: {clipped_repr(text)}")


def _validate_scores(obj: dict[str, Any]) -> dict[str, Any]:
    lo, hi = SCORE_RANGE
    scores: dict[str, Any] = {}
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for name in CRITERIA:
        if name not in lowered:
            raise JudgeParseError(f"missing '{name}' in {clipped_repr(obj)}")
        value = lowered[name]
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise JudgeParseError(f"'{name}' is not an integer: {clipped_repr(value)}")
        if not lo <= value <= hi:
            raise JudgeParseError(f"'{name}'={value} outside {lo}-{hi}")
        scores[name] = int(value)
    scores["reason"] = str(lowered.get("reason", ""))
    return scores


def summarize_judgements(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Mean score per criterion over judged answers, plus how many failed and why."""
    results = list(results)
    ok = [r for r in results if "error" not in r]
    summary: dict[str, Any] = {f"judge_{c}": (sum(r[c] for r in ok) / len(ok) if ok else None) for c in CRITERIA}
    summary["judge_n"] = len(ok)
    summary["judge_failed"] = len(results) - len(ok)
    summary["judge_failures"] = dict(Counter(r["error"] for r in results if "error" in r))
    return summary
