"""Generation like `model.generate` (greedy or sampled), with each decode step replayed as one CUDA graph.

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

    engine = DecodeEngine(model)                            # every stage that generates: prompts of any length
    completions = engine.generate(token_id_lists, generation_config)   # each cut after its end-of-turn token

Prompts are left-padded (as generate wants for decoder-only models). The model must keep its parameters where
they are between calls (single GPU or DDP; not FSDP or DeepSpeed ZeRO-3, which gather them anew).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import (
    AttentionInterface,
    LogitsProcessorList,
    MinPLogitsWarper,
    StaticCache,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

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
# How many cache slots a decode step reads, when its forward is not compiled: the slots written so far rounded up
# to a multiple of this, one recorded graph per multiple. Reading the whole static cache instead (prompt + all new
# tokens) reads about twice the KV cache that the mean context needs; at evaluation batches that is most of a step.
WINDOW_SLOTS = 64
# The number of slots decode_attention reads, set while a step is run or recorded (None: all of them).
_window: list[int | None] = [None]


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """One new query token per row against the whole static cache, grouped-query heads read in place.

    SDPA's kernels want as many key heads as query heads, so for grouped-query attention transformers copies each
    layer's whole cache to every query head of the group (Qwen3-4B: 4x, ~67 MB per layer and step at 32 rows of 256
    tokens: a quarter of a decode step, measured). Here the group's queries are the rows of one matmul against their
    key head: (B, kv_heads, group, D) x (B, kv_heads, D, L). Returns (B, 1, heads, D), as the attention layers want."""
    batch, heads, tokens, dim = query.shape
    if _window[0] is not None:  # the slots after the window are not written yet: masked anyway, not read
        key, value, attention_mask = key[:, :, :_window[0]], value[:, :, :_window[0]], attention_mask[..., :_window[0]]
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * tokens, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (scaling or dim ** -0.5)
    scores = scores.masked_fill(~attention_mask, float("-inf"))  # (B, 1, 1, L): the same for every head
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
    return out.reshape(batch, heads, tokens, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)


@contextlib.contextmanager
def _decode_attention_on(model, window: int | None = None):
    """Route the model's attention through decode_attention, reading `window` cache slots (Python-side switches:
    a recorded graph keeps them)."""
    config = model.config
    own = config._attn_implementation
    config._attn_implementation = DECODE_ATTENTION
    _window[0] = window
    try:
        yield
    finally:
        config._attn_implementation = own
        _window[0] = None


def is_stop(tokens: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """Where `tokens` is one of `stops`, by plain comparison: with many stop tokens for few rows torch.isin takes a
    path that syncs with the host, which a CUDA graph cannot record (seen on an H100 with ~1,560 stops, 3 rows)."""
    return (tokens.unsqueeze(-1) == stops).any(-1)


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
        self.graphs: dict[int | None, torch.cuda.CUDAGraph] = {}  # one per attention window
        self.eager_steps: dict[int | None, int] = {}


class GraphSampler:
    """Multinomial sampling with a static KV cache; on CUDA each decode step after the first few is a graph replay."""

    def __init__(self, model, compile_step: bool | None = None, window_slots: int | None = WINDOW_SLOTS):
        """`compile_step`: run the decode step's forward through torch.compile before recording it (None: on CUDA).
        Inductor fuses the small elementwise kernels (norms, rotary, the LoRA adapters' casts, dropout, scaling and
        adds), which the graph would otherwise replay one by one. `window_slots`: attention reads the cache up to
        the next multiple of this (one graph each); None, or a compiled step (one compile per window would take
        minutes), reads the whole cache."""
        self.model = model
        self.compile_step = compile_step
        self.window_slots = window_slots
        self._forward = None
        self._state: _Decode | None = None  # one batch shape at a time: its KV cache is the largest buffer

    def unsupported(self, generation_config) -> str | None:
        """Why this generation config cannot be sampled here (None: it can)."""
        config = self._effective(generation_config)
        return self._refusal(config, self._processors(config, 1))

    def _refusal(self, config, processors: LogitsProcessorList) -> str | None:
        if self.model.config._attn_implementation not in ATTENTION:
            return f"attention {self.model.config._attn_implementation!r}: the step passes a 4D mask (sdpa, eager)"
        if config.num_beams != 1:
            return "only one beam (greedy or multinomial sampling) is graphed"
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
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config, streamer=None,
                 max_extra_pad: int | None = None) -> torch.Tensor:
        """The prompt and generated columns, as generate returns them (pad after a row's end, cut where all ended).

        `streamer`: a transformers streamer (`put`/`end`, e.g. TextIteratorStreamer), fed as generate feeds it.
        `max_extra_pad`: reuse the recorded graph for a shorter prompt only if it needs at most this many extra
        left pads (None: always; every pad is a cache slot each decode step reads)."""
        config = self._effective(generation_config)
        batch, prompt_len = input_ids.shape
        new_tokens, device = config.max_new_tokens, input_ids.device
        processors = self._processors(config, prompt_len, device)
        reason = self._refusal(config, processors)
        if reason:
            raise ValueError(f"GraphSampler: {reason}")
        eos = [config.eos_token_id] if isinstance(config.eos_token_id, int) else list(config.eos_token_id)
        key = (batch, new_tokens, tuple(eos), config.pad_token_id, bool(config.do_sample), self.model.training,
               str(device), tuple(repr(vars(p)) for p in processors))
        state, prompt = self._state, input_ids
        too_wide = state is not None and max_extra_pad is not None and state.prompt_len - prompt_len > max_extra_pad
        if state is None or state.key != key or state.prompt_len < prompt_len or too_wide:
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
            if config.do_sample:
                chosen = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                chosen = torch.argmax(scores, dim=-1)
            chosen = chosen * state.unfinished + config.pad_token_id * (1 - state.unfinished)
            state.out.index_copy_(1, state.column, chosen[:, None])
            state.tokens.copy_(chosen[:, None])
            state.unfinished.mul_((~is_stop(chosen, state.eos)).long())
            state.column.add_(1)

        forward = self.model
        if device.type == "cuda" and self.compile_step is not False:
            if self._forward is None:
                self._forward = torch.compile(self.model, dynamic=False)
            forward = self._forward

        cache_len = state.mask.shape[-1]
        windowed = self.window_slots is not None and forward is self.model

        def window(done: int) -> int | None:
            # the step after `done` tokens writes slot prompt_len + done - 1 and reads every slot up to it
            if not windowed:
                return None
            return min(cache_len, -(-(prompt_len + done) // self.window_slots) * self.window_slots)

        def step(slots: int | None) -> None:
            state.mask.index_fill_(3, state.slot, True)
            with _decode_attention_on(self.model, slots):
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
        if streamer is not None:
            streamer.put(prompt.cpu())
            streamer.put(state.tokens[:, 0].cpu())
        done = 1
        while done < new_tokens:
            # a streamer reads every token anyway, so it also checks every step
            if (streamer is not None or done % STOP_CHECK_EVERY == 0) and not bool(state.unfinished.any()):
                break
            slots = window(done)
            if device.type != "cuda":
                step(slots)
            elif slots in state.graphs:
                state.graphs[slots].replay()
            elif state.eager_steps.get(slots, 0) < (1 if state.graphs else WARMUP_STEPS):
                # real steps run eagerly before a window's graph is recorded (lazy initialisations, new shapes)
                state.eager_steps[slots] = state.eager_steps.get(slots, 0) + 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    step(slots)
                torch.cuda.current_stream().wait_stream(side)
            else:
                graph = torch.cuda.CUDAGraph()
                pool = next(iter(state.graphs.values())).pool() if state.graphs else None  # windows run in turn
                with torch.cuda.graph(graph, pool=pool):
                    step(slots)  # recorded, not run
                state.graphs[slots] = graph
                graph.replay()
            done += 1
            if streamer is not None:  # one row (as generate streams): the loop stops right after its end
                streamer.put(state.tokens[:, 0].cpu())
        if streamer is not None:
            streamer.end()
        # generate stops at the token that finished the last row
        ended = is_stop(state.out[:, :done], state.eos)
        last = torch.where(ended.any(1), ended.int().argmax(1), done - 1)
        return torch.cat([prompt, state.out[:, :int(last.max()) + 1]], dim=1)


def merge_lora_for_decoding(model) -> str:
    """Add a PEFT LoRA adapter into the weights it adapts, in place, for inference (what was done, for the log).

    Unmerged, every adapted projection runs the base matmul plus a down and an up projection, a dropout and a
    scaled add: ~250 more kernels per decode step on Qwen3 with all seven targets. Merged, a decode step runs the
    base model's kernels. The adapter layers stay in place, marked merged (PEFT then calls only the base layer), so
    `unmerge_adapter()` can take it out again; in bf16 that round trip is not exact, so use this on a model that
    only generates and scores."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not isinstance(model, PeftModel):
        return "no adapter"
    if all(layer.merged for layer in model.modules() if isinstance(layer, BaseTunerLayer)):
        return "adapter merged into the weights"
    model.base_model.merge_adapter()
    return "adapter merged into the weights"


def _stop_ids(config) -> list[int]:
    return [config.eos_token_id] if isinstance(config.eos_token_id, int) else list(config.eos_token_id)


class DecodeEngine:
    """Generation for every stage that generates: token-id prompts of any lengths in, completions out.

    Prompts are sorted longest first and cut into batches of at most `max_batch_tokens` cache slots (prompt width +
    new tokens, per row) and `max_rows` rows; each batch runs through one GraphSampler, so on a GPU each decode
    step is one CUDA graph replay. A recorded graph is reused while the prompts get shorter by at most
    `max_extra_pad` tokens (they are left-padded to its width), so a whole evaluation records a few graphs, not
    one per batch; a last, smaller batch is padded with copies of its own prompts (thrown away) up to the next
    power of two of rows. A PEFT adapter is merged into the weights first (merge_lora_for_decoding).

    On a CPU it runs the same steps eagerly (the tests compare it with generate there); the stages keep
    transformers' generate on a CPU (`use_engine`)."""

    def __init__(self, model, max_batch_tokens: int = 65536, max_rows: int = 256, max_extra_pad: int = 128,
                 compile_step: bool = False, merge_adapter: bool = True, width_multiple: int = 1,
                 window_slots: int | None = WINDOW_SLOTS):
        """`width_multiple`: left-pad each batch to a multiple of this many tokens, so that a chat's growing
        prompt reuses the recorded graph for several turns."""
        self.adapter = merge_lora_for_decoding(model) if merge_adapter else "left as is"
        self.model = model
        self.max_batch_tokens, self.max_rows, self.max_extra_pad = max_batch_tokens, max_rows, max_extra_pad
        self.width_multiple = width_multiple
        self.sampler = GraphSampler(model, compile_step=compile_step, window_slots=window_slots)

    def describe(self) -> str:
        """One line for the stage's log: which path generates."""
        device = next(self.model.parameters()).device
        graphs = "each decode step one CUDA graph" if device.type == "cuda" else "eager steps (no CUDA)"
        return f"decode engine on {device} ({graphs}; {self.adapter})"

    def _rows(self, width: int, new_tokens: int) -> int:
        return max(1, min(self.max_rows, self.max_batch_tokens // (width + new_tokens)))

    def batches(self, lengths: list[int], new_tokens: int) -> list[list[int]]:
        """Prompt indices per batch, longest prompts first (the plan `generate` runs, without the model)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out, start = [], 0
        recorded_width, rows = None, 0
        while start < len(order):
            width = lengths[order[start]]
            if recorded_width is None or width > recorded_width or recorded_width - width > self.max_extra_pad:
                recorded_width, rows = width, self._rows(width, new_tokens)
            out.append(order[start:start + rows])
            start += rows
        return out

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], generation_config, streamer=None,
                 progress=None) -> list[list[int]]:
        """Each prompt's generated tokens, up to and including the token that ended it (greedy or sampled, as
        the config says). `streamer` works with one prompt; `progress(done, total)` is called after each batch."""
        if streamer is not None and len(prompts) != 1:
            raise ValueError("a streamer follows one prompt; pass one prompt at a time")
        config = self.sampler._effective(generation_config)
        pad, stop = config.pad_token_id, set(_stop_ids(config))
        device = next(self.model.parameters()).device
        outputs: list[list[int]] = [[] for _ in prompts]
        plan = self.batches([len(p) for p in prompts], config.max_new_tokens)
        finished = 0
        for batch in plan:
            rows = list(batch)
            recorded = self.sampler._state.key[0] if self.sampler._state is not None else None
            if recorded is not None and len(rows) < recorded:
                # the short last batch: its prompts repeated (results thrown away) up to the recorded rows when
                # that at most doubles it, else up to a power of two: one more graph, not one per size
                full = recorded if 2 * len(rows) >= recorded else 1 << (len(rows) - 1).bit_length()
                rows += [rows[k % len(rows)] for k in range(full - len(rows))]
            width = -(-max(len(prompts[i]) for i in rows) // self.width_multiple) * self.width_multiple
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, i in enumerate(rows):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            out = self.sampler.generate(ids.to(device), mask.to(device), config, streamer=streamer,
                                        max_extra_pad=self.max_extra_pad)
            completions = out[:, width:].tolist()
            for row, i in enumerate(batch):
                tokens = completions[row]
                end = next((k for k, t in enumerate(tokens) if t in stop), None)
                outputs[i] = tokens[:end + 1] if end is not None else tokens
            finished += len(batch)
            if progress is not None:
                progress(finished, len(prompts))
        return outputs


def use_engine(model) -> bool:
    """Whether a stage generates with DecodeEngine: on a CUDA GPU (CUDA graphs need one); a CPU keeps generate."""
    return next(model.parameters()).device.type == "cuda"


class OnePromptGenerator:
    """One prompt at a time, as chat and the local RAG answerer generate: the decode engine on a CUDA GPU (a chat's
    growing prompt padded to a multiple of 128 tokens, so a recorded graph serves several turns), transformers'
    generate elsewhere. Says which path on stderr, once."""

    def __init__(self, model, stage: str, engine: bool | None = None):
        import sys

        self.model = model
        self.engine = DecodeEngine(model, max_rows=1, width_multiple=128) \
            if engine or (engine is None and use_engine(model)) else None
        path = self.engine.describe() if self.engine else \
            f"transformers generate on {next(model.parameters()).device} (the decode engine needs a CUDA GPU)"
        print(f"{stage}: {path}", file=sys.stderr)

    def generate(self, input_ids: list[int], generation_config, streamer=None) -> list[int]:
        """The new tokens (up to and including the one that ended the reply)."""
        if self.engine is not None:
            return self.engine.generate([input_ids], generation_config, streamer=streamer)[0]
        device = next(self.model.parameters()).device
        ids = torch.tensor([input_ids], device=device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                      generation_config=generation_config)
        return out[0, len(input_ids):].tolist()
