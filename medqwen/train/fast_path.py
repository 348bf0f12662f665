"""The trainer's fast path: which settings a run gets, the exact-batch collator, and the process-wide torch settings.

The fast path changes how an optimizer step is computed, never which step: each step still holds
per_device_train_batch_size x gradient_accumulation_steps x processes whole conversations, in the sampler's order,
and the loss is still normalised over the step's assistant tokens (transformers' `num_items_in_batch`). What changes:

    padding_free            a micro-batch's conversations are concatenated into one row (positions restart per
                            conversation, attention never crosses them): no pad tokens
    max_tokens_per_forward  a micro-batch longer than this runs as several forward/backward passes, split at
                            conversation boundaries (bounds memory whatever the lengths; the gradient is the sum)
    fused_lora, attn_implementation=varlen, compile_layers, activation_memory_budget, lora_keep_dropped_inputs
                            the kernels (medqwen.kernels.fused_lora, medqwen.kernels.packed_attention)

    cfg, why = resolve_fast_path(cfg)       # TrainConfig.fast_path: auto | off | speed | 80gb | 24gb
    apply_fast_path(trainer, cfg)           # called by medqwen.train.sft.build_trainer

benchmark/PERF.md records what each setting bought on a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from medqwen.kernels.fused_lora import compile_layers, fuse_lora, set_recompute_layers
from medqwen.kernels.packed_attention import _VARLEN_ATTN, VARLEN, register_attention, skip_mask_building

LORA_SHARED_INPUTS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"]

# Settings of each fast path; the micro-batch itself is set by resolve_fast_path (the whole per-process share of
# a step in one micro-batch, split into forwards of at most max_tokens_per_forward tokens).
_COMMON = {"padding_free": True, "packing": False, "fused_lora": True, "attn_implementation": VARLEN,
           "compile_layers": True, "gradient_checkpointing": False, "use_liger_kernel": False,
           "deferred_metrics": True}
FAST_PATHS: dict[str, dict[str, Any]] = {
    # activations of a whole forward fit in an H200; layers that share an input keep their dropped-out input
    "speed": {**_COMMON, "max_tokens_per_forward": 24576, "lora_keep_dropped_inputs": LORA_SHARED_INPUTS},
    # the same at half the tokens per forward, for 80 GB cards (benchmark/PERF.md: the speed preset's memory)
    "80gb": {**_COMMON, "max_tokens_per_forward": 12288, "lora_keep_dropped_inputs": LORA_SHARED_INPUTS},
    # 8K tokens per forward, and the compiler keeps 30% of each layer's activations, recomputing cheap ops
    "24gb": {**_COMMON, "max_tokens_per_forward": 8192, "activation_memory_budget": 0.3},
}
# auto: the largest fast path whose measured peak fits the card (GiB of total GPU memory)
MIN_GPU_GIB = {"speed": 135.0, "80gb": 75.0, "24gb": 22.0}
CUDA_ONLY = ("compile_layers", "use_liger_kernel")  # Inductor / Triton kernels: off on CPU


def kernel_support() -> dict[str, bool]:
    """Whether this machine has what the fast path needs: a CUDA GPU, torch's FlashAttention varlen, Triton."""
    import importlib.util

    import torch

    return {"cuda": torch.cuda.is_available(), "varlen": _VARLEN_ATTN is not None,
            "triton": importlib.util.find_spec("triton") is not None}


def choose_fast_path(requested: str, cuda: bool, gpu_gib: float | None, varlen: bool, triton: bool
                     ) -> tuple[str, str]:
    """The fast path a run gets and why: ("off" or a FAST_PATHS name, reason). A pure function of the machine.

    auto: on a CUDA GPU with torch's FlashAttention varlen kernel and Triton, the largest fast path that fits
    the GPU's memory; else off (CPU runs are unchanged). A named path is taken as asked, with the CUDA-only
    parts off on CPU; on a GPU missing a kernel it falls back to off.
    """
    if requested == "off":
        return "off", "--fast_path off: the plain path"
    if requested != "auto" and requested not in FAST_PATHS:
        raise ValueError(f"--fast_path {requested!r}: choose auto, off or one of {sorted(FAST_PATHS)}")
    if not cuda:
        if requested == "auto":
            return "off", "no CUDA GPU: the plain path (CPU runs are unchanged)"
        return requested, f"--fast_path {requested} on CPU: same batches, CUDA-only parts off ({', '.join(CUDA_ONLY)})"
    missing = [name for name, ok in (("FlashAttention varlen (torch >= 2.9: torch.nn.attention.varlen)", varlen),
                                     ("Triton (pip install triton)", triton)) if not ok]
    if missing:
        return "off", (f"the fast path needs {' and '.join(missing)}, missing here: falling back to the plain path "
                       "(same recipe, several times slower); install it for the fast path")
    if requested != "auto":
        return requested, f"--fast_path {requested}"
    for name, need in MIN_GPU_GIB.items():
        if gpu_gib is not None and gpu_gib >= need:
            return name, f"auto: {gpu_gib:.0f} GiB GPU >= {need:.0f} GiB, the {name} settings"
    return "off", (f"auto: {gpu_gib or 0:.0f} GiB GPU is below the {MIN_GPU_GIB['24gb']:.0f} GiB the smallest "
                   "fast path needs: the plain path (gradient checkpointing)")


def fast_path_settings(cfg, name: str, cuda: bool) -> dict[str, Any]:
    """The TrainConfig fields fast path `name` sets on `cfg`: its settings (cfg's own max_tokens_per_forward if
    set), and one micro-batch holding the whole per-process share of the optimizer step (the same conversations
    per step as cfg's own split)."""
    settings = dict(FAST_PATHS[name])
    if not cuda:
        settings.update({k: False for k in CUDA_ONLY})
    if cfg.max_tokens_per_forward > 0:  # the user's budget (e.g. a card between the named sizes)
        settings["max_tokens_per_forward"] = cfg.max_tokens_per_forward
    settings["per_device_train_batch_size"] = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    settings["gradient_accumulation_steps"] = 1
    return settings


def resolve_fast_path(cfg, support: dict | None = None):
    """(cfg with its fast path's settings applied and `fast_path` set to the choice, reason).

    `support`: kernel_support() of this machine (measured if None), optionally with "gpu_gib" (the GPU's total
    memory; read from the device if absent)."""
    if cfg.fast_path == "off":
        return cfg, "--fast_path off: the plain path"
    support = support if support is not None else kernel_support()
    gpu_gib = support.get("gpu_gib")
    if support["cuda"] and gpu_gib is None:
        import torch

        gpu_gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    name, why = choose_fast_path(cfg.fast_path, support["cuda"], gpu_gib, support["varlen"], support["triton"])
    if name == "off":
        return replace(cfg, fast_path="off"), why
    return replace(cfg, fast_path=name, **fast_path_settings(cfg, name, support["cuda"])), why


# ----------------------------------------------------------------------------------------------------------
# Exact-batch, padding-free micro-batches

FORWARD_CHUNKS = "forward_chunks"  # batch key: the micro-batch as several padding-free batches, one forward each


def split_by_tokens(lengths: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """Contiguous (start, end) ranges of `lengths` with at most `max_tokens` tokens each (a longer item alone),
    as few as the budget allows and, where the budget allows, of about equal tokens (no small remainder
    forward). No budget (<= 0): one range."""
    if max_tokens <= 0 or sum(lengths) <= max_tokens:
        return [(0, len(lengths))]
    greedy, start, run = [], 0, 0  # filling each range to the budget gives the fewest ranges
    for i, n in enumerate(lengths):
        if i > start and run + n > max_tokens:
            greedy.append((start, i))
            start, run = i, 0
        run += n
    greedy.append((start, len(lengths)))
    parts, total = len(greedy), sum(lengths)
    balanced, start, cum = [], 0, 0
    for i, n in enumerate(lengths):
        cum += n
        # close the range after item i once its middle passes the next of `parts` equal shares
        if len(balanced) < parts - 1 and i + 1 < len(lengths) and cum - n / 2 >= total * (len(balanced) + 1) / parts:
            balanced.append((start, i + 1))
            start = i + 1
    balanced.append((start, len(lengths)))
    fits = all(b - a == 1 or sum(lengths[a:b]) <= max_tokens for a, b in balanced)
    return balanced if fits and len(balanced) == parts else greedy


class PaddingFreeCollator:
    """A micro-batch of whole conversations as one row (positions restart per conversation, no pads): the batch TRL's
    padding-free collator builds, key for key, plus the same micro-batch split into forwards of at most
    `max_tokens` tokens under FORWARD_CHUNKS when it is longer. The full batch stays: the Trainer counts the step's
    assistant tokens in it.

    Built with numpy and the chunks sliced from the full batch: TRL's collator makes one tensor per conversation
    and draws `seq_idx` with torch.repeat_interleave, ~15 ms for 64 conversations (x3 with two forwards) of host
    time that a short training step waits for."""

    def __init__(self, pad_token_id: int, max_tokens: int = 0):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.trl_collate = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)
        self.max_tokens = max_tokens

    def __call__(self, examples: list[dict]) -> dict:
        if "seq_lengths" in examples[0]:  # rows already packed by TRL: its collator knows their layout
            return self.trl_collate(examples)
        lengths = np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int64, count=len(examples))
        starts = np.zeros(len(examples) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        input_ids = np.concatenate([np.asarray(e["input_ids"], dtype=np.int64) for e in examples])
        labels = np.concatenate([np.asarray(e.get("labels", e["input_ids"]), dtype=np.int64) for e in examples])
        positions = np.arange(starts[-1], dtype=np.int64) - np.repeat(starts[:-1], lengths)
        labels[positions == 0] = -100  # a conversation's first token has nothing before it to predict it from
        batch = _padding_free_batch(input_ids, labels, positions, starts)
        ranges = split_by_tokens(lengths.tolist(), self.max_tokens)
        if len(ranges) > 1:
            batch[FORWARD_CHUNKS] = [
                _padding_free_batch(input_ids[starts[a]:starts[b]], labels[starts[a]:starts[b]],
                                    positions[starts[a]:starts[b]], starts[a:b + 1] - starts[a])
                for a, b in ranges]
        return batch


def _padding_free_batch(input_ids, labels, positions, starts) -> dict:
    """TRL's padding-free batch of one row: tokens, labels, positions, sequence boundaries and their maxima, and
    each token's sequence index (for linear-attention layers)."""
    lengths = np.diff(starts)
    cu_seq_lens = torch.from_numpy(starts.astype(np.int32))
    longest = int(lengths.max())
    return {"input_ids": torch.from_numpy(input_ids)[None], "labels": torch.from_numpy(labels)[None],
            "position_ids": torch.from_numpy(positions)[None],
            "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest,
            "max_length_k": longest,
            "seq_idx": torch.from_numpy(np.repeat(np.arange(len(lengths), dtype=np.int32), lengths))[None]}


# ----------------------------------------------------------------------------------------------------------
# Applying the kernels to a trainer (process-wide torch settings live here, the kernels in medqwen.kernels.fused_lora)


def attention_implementation(attn_implementation: str | None, packed_rows: bool = False) -> str | None:
    """The attention kernel a config trains with: its own choice, else varlen for padding-free rows (packing or
    padding_free, where SDPA would compute a T x T block mask), else transformers' default (None)."""
    if attn_implementation:
        return attn_implementation
    return VARLEN if packed_rows else None


def _recompute_callback(n: int):
    from transformers import TrainerCallback

    class RecomputeLayersCallback(TrainerCallback):
        """Selective recompute: the Trainer enables checkpointing on every layer; keep it on the first n."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None:
                set_recompute_layers(model, n)

    return RecomputeLayersCallback()


def set_compiler_settings(budget: float, eager_dropout_rng: bool) -> bool:
    """The process-wide compiler settings compiled layers train with; returns whether eager dropout RNG is on.

    Set on every trainer build (defaults included): a trainer must not inherit the settings of one built before
    it in the same process.
    """
    import torch._dynamo
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    # The partitioner of each compiled layer's forward/backward keeps at most this fraction of what it would
    # save, recomputing the ops that are cheapest per byte.
    functorch_config.activation_memory_budget = budget
    # Under DDP, Dynamo's DDPOptimizer splits compiled graphs at gradient-bucket boundaries; meant for a compiled
    # whole model, it fails on our per-layer graphs (torch 2.11, with LoRA dropout). DDP's bucketed all-reduce
    # still overlaps the backward of the layers between the graphs.
    torch._dynamo.config.optimize_ddp = False
    # Inductor's own dropout code draws a full Philox round per element and keeps one of its four numbers: with
    # seven LoRA dropouts per layer the mask kernels were compute-bound. torch's dropout kernel keeps all four and
    # is memory-bound; it also draws the masks eager training draws. Not under a memory budget: there the
    # partitioner recomputes the compiler's masks from their seed, while torch's kernel's outputs must be kept
    # (benchmark/PERF.md, "Versions").
    eager_rng = eager_dropout_rng and budget >= 1.0
    inductor_config.fallback_random = eager_rng
    return eager_rng


def apply_fast_path(trainer, cfg) -> dict:
    """Switch the trainer to the fast pieces the config asks for; returns what was applied."""
    model = trainer.model
    applied: dict[str, Any] = {}
    if attention_implementation(cfg.attn_implementation, cfg.packing or cfg.padding_free) == VARLEN:
        register_attention()
        if getattr(model.config, "_attn_implementation", None) != VARLEN:
            model.set_attn_implementation(VARLEN)
        applied["attention"] = VARLEN
        if cfg.fast_path != "off":
            applied["no_mask_building"] = skip_mask_building(model)
    if cfg.padding_free:
        trainer.data_collator = PaddingFreeCollator(trainer.processing_class.pad_token_id,
                                                    cfg.max_tokens_per_forward)
        applied["padding_free"] = {"conversations_per_micro_batch": cfg.per_device_train_batch_size,
                                   "max_tokens_per_forward": cfg.max_tokens_per_forward}
    if cfg.fast_path != "off":
        # The Trainer's NaN/inf filter reads each step's loss on the host: a device sync that leaves the GPU idle
        # while the host starts the next step. A fast path logs a NaN loss as NaN, not as the running mean.
        trainer.args.logging_nan_inf_filter = False
        applied["logging_nan_inf_filter"] = False
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if cfg.fused_lora and not sharded:  # FSDP/ZeRO-3 gather weights in module hooks: not run
        # Under an activation memory budget the partitioner recomputes some base outputs in backward and then
        # clones the buffer the in-place add mutates: the 24gb preset ran slower with it (benchmark/PERF.md).
        in_place = cfg.activation_memory_budget >= 1.0
        applied["fused_lora_layers"] = fuse_lora(model, cfg.lora_keep_dropped_inputs, compiled_in_place=in_place)
    if cfg.recompute_layers >= 0 and cfg.gradient_checkpointing:
        trainer.add_callback(_recompute_callback(cfg.recompute_layers))
        applied["recompute_layers"] = cfg.recompute_layers
    if cfg.compile_layers:
        budget = cfg.activation_memory_budget
        applied["eager_dropout_rng"] = set_compiler_settings(budget, cfg.eager_dropout_rng)
        if budget < 1.0:
            applied["activation_memory_budget"] = budget
        applied["compiled_layers"] = compile_layers(model)
        if cfg.use_liger_kernel:
            # Liger's Triton autograd functions stop Dynamo inside a compiled layer (torch 2.11 / liger 0.8.5) and
            # Inductor fuses norm, RoPE and SwiGLU itself; the Trainer applies this config when training starts.
            trainer.args.liger_kernel_config = {k: False for k in ("rope", "rms_norm", "swiglu", "cross_entropy",
                                                                   "fused_linear_cross_entropy")}
            applied["liger_kernel_config"] = trainer.args.liger_kernel_config
    return applied


# ----------------------------------------------------------------------------------------------------------
# The fast path's trainer code


def fast_path_trainer(trainer_cls):
    """`trainer_cls` with the fast path's trainer behaviour: micro-batches split into forwards by token count
    (FORWARD_CHUNKS) and training metrics read once per logging step (when `deferred_metrics` is set)."""
    return with_deferred_metrics(with_forward_chunks(trainer_cls))


def with_forward_chunks(trainer_cls):
    """A subclass of a transformers/TRL trainer that runs a micro-batch carrying FORWARD_CHUNKS (see
    medqwen.train.fast_path.PaddingFreeCollator) as one forward/backward per chunk.

    Each chunk's loss is normalised by the whole optimizer step's assistant-token count (`num_items_in_batch`,
    counted by the Trainer on the full micro-batch), so the summed gradients and the reported loss are those of
    the micro-batch in one pass. Under DDP only the last chunk's backward all-reduces.
    """
    class ChunkedTrainer(trainer_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            chunks = inputs.pop(FORWARD_CHUNKS, None)
            if not chunks:
                return super().training_step(model, inputs, num_items_in_batch)
            total = None
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                    loss = super().training_step(model, chunk, num_items_in_batch)
                total = loss if total is None else total + loss
            return total

        def prediction_step(self, model, inputs, *args, **kwargs):
            inputs.pop(FORWARD_CHUNKS, None)  # no gradients kept: the whole micro-batch in one pass
            return super().prediction_step(model, inputs, *args, **kwargs)

    ChunkedTrainer.__name__ = ChunkedTrainer.__qualname__ = f"Chunked{trainer_cls.__name__}"
    return ChunkedTrainer


def with_deferred_metrics(trainer_cls):
    """A subclass of TRL's SFTTrainer that, when `deferred_metrics` is set, keeps its training metrics (entropy,
    token accuracy, tokens seen) on the device and reads them once per logging step.

    TRL gathers them across processes and reads them with `.item()` after every forward. Each read makes the host
    wait for the GPU; and under DDP, where a micro-batch split into forwards by token count gives processes
    different numbers of forwards, those per-forward gathers paired the wrong collectives and training hung.
    Here one reduction per logging step covers everything since the last (each process has trained as many
    micro-batches). The logged values are TRL's: per micro-batch (all processes and forwards of it together) the
    mean entropy and accuracy over its assistant tokens, averaged over the logging window; tokens seen, all
    processes. Evaluation, and losses other than TRL's plain one (a custom loss, label smoothing, DFT, MoE aux
    loss, sequence parallelism), keep TRL's own code.
    """

    class DeferredMetricsTrainer(trainer_cls):
        deferred_metrics = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # per micro-batch since the last log: [entropy sum, top-1 hits, assistant tokens, tokens]
            self._metric_rows = []
            self._micro_batch_row = None  # the micro-batch being trained: the sums over its forwards so far

        def _plain_loss(self) -> bool:
            parallelism = getattr(self.accelerator, "parallelism_config", None)
            return (self.compute_loss_func is None and self.label_smoother is None
                    and getattr(self.args, "loss_type", "nll") == "nll" and not self.aux_loss_enabled
                    and not (parallelism is not None and getattr(parallelism, "sp_enabled", False)))

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if self._micro_batch_row is not None:
                self._metric_rows.append(self._micro_batch_row)
                self._micro_batch_row = None
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not (self.deferred_metrics and self.model.training and self._plain_loss()):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # TRL's loss, as its compute_loss computes it: log-probabilities from its fused LM head, summed over
            # the assistant tokens and divided by the step's assistant-token count
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = (-outputs.log_probs).sum() / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            if "attention_mask" in inputs:
                seen = inputs["attention_mask"].sum()
            else:  # padding-free: every position is a token
                seen = torch.full((), inputs["position_ids"].size(1), device=loss.device)
            row = torch.stack([outputs.entropy.detach().sum().float(), outputs.is_top1.sum().float(),
                               outputs.label_mask.sum().float(), seen.float()])
            self._micro_batch_row = row if self._micro_batch_row is None else self._micro_batch_row + row
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, start_time=None):
            if self._metric_rows and self.model.training:
                rows = torch.stack(self._metric_rows)
                self._metric_rows = []
                if self.accelerator.num_processes > 1:  # every process logs at the same step, after as many rows
                    rows = self.accelerator.reduce(rows, reduction="sum")
                metrics = self._metrics["train"]
                for entropy, hits, valid, seen in rows.tolist():  # the one read of the logging window
                    metrics["entropy"].append(entropy / valid if valid > 0 else 0.0)
                    metrics["mean_token_accuracy"].append(hits / valid if valid > 0 else 0.0)
                    self._total_train_tokens += int(seen) // self._tp_size
                metrics["num_tokens"] = [self._total_train_tokens]
            super().log(logs, start_time)

    DeferredMetricsTrainer.__name__ = DeferredMetricsTrainer.__qualname__ = f"DeferredMetrics{trainer_cls.__name__}"
    return DeferredMetricsTrainer
