"""Sampling like `model.generate(do_sample=True)`, with each decode step replayed as one CUDA graph.

transformers' generate runs Python for every new token: the model's forward layer by layer (and each LoRA adapter
in it), the logits processors, the sampling, the bookkeeping, a few thousand small kernel launches per token. At
the batch sizes of RL rollouts a GPU then waits on the host most of the time. Here one decode step reads and
writes only fixed buffers (the new token, its position, a 4D attention mask over a static KV cache, the output
columns, the finished flags), so on a GPU it is captured once with `torch.cuda.graph` and every later token is
one `replay()`: the same kernels, launched by the driver from a recorded list, with no host sync except a check
every STOP_CHECK_EVERY tokens whether all rows have finished. The step is plain eager PyTorch: on a CPU it runs as
is, and it samples exactly what generate samples with the same seed (the tests check it), because it calls the
same logits processors and the same `torch.multinomial` in the same order.

    sampler = GraphSampler(model)
    why_not = sampler.unsupported(generation_config)        # None: this config samples here
    sequences = sampler.generate(input_ids, attention_mask, generation_config)   # prompt + completion columns

Prompts are left-padded (as generate wants for decoder-only models). The model must keep its parameters where
they are between calls (single GPU or DDP; not FSDP or DeepSpeed ZeRO-3, which gather them anew).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import (AttentionInterface, LogitsProcessorList, MinPLogitsWarper, StaticCache, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

# One host sync per this many tokens to learn whether every row has finished: a finished batch decodes at most
# this many pad tokens more (cut off afterwards), an unfinished one never waits on the host.
STOP_CHECK_EVERY = 16
# Eager decode steps before the capture, so that lazy initialisations (cuBLAS workspaces, kernel selection) happen
# outside the graph; they are real steps, not thrown away.
WARMUP_STEPS = 2
# Processors that read only the scores (never the token history): the step can run them inside the graph.
SCORE_ONLY_PROCESSORS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper)
# Attention of the prompt pass (the decode step always uses decode_attention below).
ATTENTION = ("sdpa", "eager")
DECODE_ATTENTION = "medqwen_decode"


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """One new query token per row against the whole static cache, grouped-query heads read in place.

    SDPA's kernels want as many key heads as query heads, so for grouped-query attention transformers copies each
    layer's whole cache to every query head of the group (Qwen3-4B: 4x, ~67 MB per layer and step at 32 rows of 256
    tokens: a quarter of a decode step, measured). Here the group's queries are the rows of one matmul against their
    key head: (B, kv_heads, group, D) x (B, kv_heads, D, L). Returns (B, 1, heads, D), as the attention layers want."""
    batch, heads, tokens, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * tokens, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (scaling or dim ** -0.5)
    scores = scores.masked_fill(~attention_mask, float("-inf"))  # (B, 1, 1, L): the same for every head
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
    return out.reshape(batch, heads, tokens, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)


@contextlib.contextmanager
def _decode_attention_on(model):
    """Route the model's attention through decode_attention (a Python-side switch: a recorded graph keeps it)."""
    config = model.config
    own = config._attn_implementation
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = own


class _Decode:
    """The fixed buffers of one batch shape: everything a decode step reads and writes."""

    def __init__(self, model, key: tuple, batch: int, prompt_len: int, new_tokens: int, eos: list[int],
                 device: torch.device):
        self.key = key  # what a recorded graph has baked in: shapes, sampling settings, train/eval mode
        self.prompt_len = prompt_len
        self.eos = torch.tensor(eos, device=device)
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens)
        long = dict(dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch, 1, **long)              # the token fed to the next step
        self.positions = torch.zeros(batch, 1, **long)           # its rotary position (pads do not count)
        self.slot = torch.zeros(1, **long)                       # its column in the KV cache
        self.column = torch.zeros(1, **long)                     # its column in `out`
        self.out = torch.zeros(batch, new_tokens, **long)        # the sampled tokens
        self.unfinished = torch.ones(batch, **long)
        # True where a query may attend: the prompt's real tokens, then each new slot as it is written
        self.mask = torch.zeros(batch, 1, 1, prompt_len + new_tokens, dtype=torch.bool, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None


class GraphSampler:
    """Multinomial sampling with a static KV cache; on CUDA each decode step after the first few is a graph replay."""

    def __init__(self, model, compile_step: bool | None = None):
        """`compile_step`: run the decode step's forward through torch.compile before recording it (None: on CUDA).
        Inductor fuses the small elementwise kernels (norms, rotary, the LoRA adapters' casts, dropout, scaling and
        adds), which the graph would otherwise replay one by one."""
        self.model = model
        self.compile_step = compile_step
        self._forward = None
        self._state: _Decode | None = None  # one batch shape at a time: its KV cache is the largest buffer

    def unsupported(self, generation_config) -> str | None:
        """Why this generation config cannot be sampled here (None: it can)."""
        config = self._effective(generation_config)
        return self._refusal(config, self._processors(config, 1))

    def _refusal(self, config, processors: LogitsProcessorList) -> str | None:
        if self.model.config._attn_implementation not in ATTENTION:
            return f"attention {self.model.config._attn_implementation!r}: the step passes a 4D mask (sdpa, eager)"
        if not config.do_sample or config.num_beams != 1:
            return "only multinomial sampling (do_sample, one beam) is graphed"
        if config.eos_token_id is None or config.pad_token_id is None:
            return "the generation config needs eos_token_id and pad_token_id"
        others = [type(p).__name__ for p in processors if not isinstance(p, SCORE_ONLY_PROCESSORS)]
        if others:
            return f"logits processors that read the token history: {', '.join(others)}"
        return None

    def _effective(self, generation_config):
        """The config generate would use: unset fields from the model's own generation config."""
        config, _ = self.model._prepare_generation_config(generation_config)
        return config

    def _processors(self, config, prompt_len: int, device=None) -> LogitsProcessorList:
        # generate's own list for this config (temperature, top-k, top-p, min-p ... in generate's order)
        return self.model._get_logits_processor(generation_config=config, input_ids_seq_length=prompt_len,
                                                encoder_input_ids=None, prefix_allowed_tokens_fn=None,
                                                logits_processor=LogitsProcessorList(), device=device,
                                                model_kwargs={})

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config) -> torch.Tensor:
        """The prompt and sampled columns, as generate returns them (pad after a row's end, cut where all ended)."""
        config = self._effective(generation_config)
        batch, prompt_len = input_ids.shape
        new_tokens, device = config.max_new_tokens, input_ids.device
        processors = self._processors(config, prompt_len, device)
        reason = self._refusal(config, processors)
        if reason:
            raise ValueError(f"GraphSampler: {reason}")
        eos = [config.eos_token_id] if isinstance(config.eos_token_id, int) else list(config.eos_token_id)
        key = (batch, new_tokens, tuple(eos), config.pad_token_id, self.model.training, str(device),
               tuple(repr(vars(p)) for p in processors))
        state, prompt = self._state, input_ids
        if state is None or state.key != key or state.prompt_len < prompt_len:
            self._state = state = None  # free the old cache and graph before allocating the new ones
            state = self._state = _Decode(self.model, key, batch, prompt_len, new_tokens, eos, device)
        else:
            # A shorter prompt is left-padded (masked) to the recorded width: shapes only ever grow, so the graph
            # (and a compiled forward, minutes on a 4B model) is rebuilt only when a longer prompt comes.
            state.cache.reset()  # the same tensors, zeroed: a recorded graph keeps reading them
            extra = state.prompt_len - prompt_len
            input_ids = torch.nn.functional.pad(input_ids, (extra, 0), value=config.pad_token_id)
            attention_mask = torch.nn.functional.pad(attention_mask, (extra, 0), value=0)
            prompt_len = state.prompt_len
        mask = attention_mask.bool()
        state.mask.zero_()
        state.mask[:, 0, 0, :prompt_len] = mask
        positions = attention_mask.long().cumsum(-1) - 1
        state.positions.copy_(positions[:, -1:] + 1)
        state.slot.fill_(prompt_len)
        state.column.zero_()
        state.unfinished.fill_(1)
        state.out.fill_(config.pad_token_id)

        def pick(logits: torch.Tensor) -> None:
            # generate's token selection, on the buffers
            scores = processors(state.tokens, logits.float())
            chosen = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            chosen = chosen * state.unfinished + config.pad_token_id * (1 - state.unfinished)
            state.out.index_copy_(1, state.column, chosen[:, None])
            state.tokens.copy_(chosen[:, None])
            state.unfinished.mul_((~torch.isin(chosen, state.eos)).long())
            state.column.add_(1)

        forward = self.model
        if device.type == "cuda" and self.compile_step is not False:
            if self._forward is None:
                self._forward = torch.compile(self.model, dynamic=False)
            forward = self._forward

        def step() -> None:
            state.mask.index_fill_(3, state.slot, True)
            with _decode_attention_on(self.model):
                logits = forward(input_ids=state.tokens, attention_mask=state.mask, position_ids=state.positions,
                                    past_key_values=state.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            pick(logits)
            state.slot.add_(1)
            state.positions.add_(1)

        prefill = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=positions.masked_fill(attention_mask == 0, 0), past_key_values=state.cache,
                             use_cache=True, logits_to_keep=1)
        pick(prefill.logits[:, -1])
        del prefill
        done = 1
        while done < new_tokens:
            if done % STOP_CHECK_EVERY == 0 and not bool(state.unfinished.any()):
                break
            if device.type != "cuda":
                step()
            elif state.graph is not None:
                state.graph.replay()
            elif done <= WARMUP_STEPS:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    step()
                torch.cuda.current_stream().wait_stream(side)
            else:
                state.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(state.graph):
                    step()  # recorded, not run
                state.graph.replay()
            done += 1
        # generate stops at the token that finished the last row
        ended = torch.isin(state.out[:, :done], state.eos)
        last = torch.where(ended.any(1), ended.int().argmax(1), done - 1)
        return torch.cat([prompt, state.out[:, :int(last.max()) + 1]], dim=1)
