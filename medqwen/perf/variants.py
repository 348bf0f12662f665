"""Named training recipes for perf_train: TrainConfig overrides on top of the defaults, or a preset YAML."""

from __future__ import annotations

import dataclasses

from medqwen.configlib import REPO_ROOT, resolve_config
from medqwen.train.config import TrainConfig

# Named recipes: TrainConfig overrides on top of the defaults (the original recipe); "config" names a preset YAML.
# A variant may add overrides after a colon, applied after its fast path: "24gb:max_tokens_per_forward=4096".
# The packing variants fill rows to a token budget, so their optimizer steps hold a number of conversations that
# depends on the lengths: a different recipe, kept to measure what the exact batch costs (perf_train marks them).
_PACKED = {"fast_path": "off", "packing": True, "gradient_accumulation_steps": 3}
VARIANTS: dict[str, dict] = {
    # the seed recipe: pad to the longest in the batch, batch 8 x accumulation 8, gradient checkpointing, SDPA,
    # PEFT's own LoRA forward
    "original": {"fast_path": "off", "attn_implementation": "sdpa"},
    "packed": {**_PACKED, "attn_implementation": "sdpa"},
    "packed+liger": {**_PACKED, "attn_implementation": "sdpa", "use_liger_kernel": True,
                     "gradient_checkpointing": False},
    "packed+compile": {**_PACKED, "attn_implementation": "sdpa", "gradient_checkpointing": False,
                       "compile_layers": True},
    "fused": {**_PACKED, "attn_implementation": "sdpa", "use_liger_kernel": True, "gradient_checkpointing": False,
              "fused_lora": True},
    "fused+varlen": {**_PACKED, "attn_implementation": "varlen", "use_liger_kernel": True,
                     "gradient_checkpointing": False, "fused_lora": True},
    # the old speed preset: 24 packed rows x 1, a step of as many conversations as fit 24 x max_seq_len tokens
    "packed-speed": {**_PACKED, "per_device_train_batch_size": 24, "gradient_accumulation_steps": 1,
                     "attn_implementation": "varlen", "gradient_checkpointing": False, "fused_lora": True,
                     "compile_layers": True, "lora_keep_dropped_inputs": ["q_proj", "k_proj", "v_proj", "gate_proj",
                                                                           "up_proj"]},
    # the presets: the exact recipe, padding-free micro-batches of whole conversations
    "speed": {"config": "configs/qwen3-4b/lora_speed_1xh200.yaml"},
    "24gb": {"config": "configs/qwen3-4b/lora_24gb.yaml"},
    # one process's share of the two-card preset (8 x 4 per process) with the 24 GB settings
    "2x24gb-share": {"config": "configs/qwen3-4b/lora_2x24gb.yaml", "fast_path": "24gb"},
}


def variant_config(spec: str, base: dict, support: dict | None = None):
    """TrainConfig of a variant spec (`name` or `name:field=value:field=value`) on top of `base` overrides, with
    its fast path resolved for this machine (`support`: medqwen.train.fast_path.kernel_support(), measured if None)."""
    from medqwen.train.fast_path import resolve_fast_path

    name, _, extra = spec.partition(":")
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
    recipe = dict(VARIANTS[name])
    if "config" in recipe:
        recipe["config"] = str(REPO_ROOT / recipe["config"])
    cfg = resolve_config(TrainConfig, cli={**base, **recipe})
    cfg, _ = resolve_fast_path(cfg, support)
    overrides = {}
    for item in filter(None, extra.split(":")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = value.strip()
    if overrides:
        cfg = resolve_config(TrainConfig, cli={**dataclasses.asdict(cfg), **overrides})
    return cfg
