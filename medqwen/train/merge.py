"""Merge a LoRA adapter into its base model and save a standalone folder (trainer/merge_lora.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from medqwen.chat import load_tokenizer
from medqwen.configlib import UserError, save_config
from medqwen.runs import resolve_model


class OutputExistsError(UserError, FileExistsError):
    """The output folder holds something other than an earlier merge (never overwritten)."""


def merge_adapter(cfg) -> Path:
    """Merge a LoRA adapter into its base (in fp32) and save model + tokenizer + chat template to a new folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    choice = resolve_model(cfg.model, cfg.adapter, "lora")
    adapter, base = Path(cfg.adapter), choice.model
    out = Path(cfg.output_dir or f"{str(adapter).rstrip('/')}-merged")
    if out.exists() and any(out.iterdir()) and not (out / "merge_config.yaml").is_file():
        raise OutputExistsError(f"{out} exists and is not an earlier merge: choose another --output_dir")

    saved_dtype = AutoConfig.from_pretrained(base).dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # merge W + BA in full precision
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base, cfg.chat_template)

    staged = out.parent / f".{out.name}.staging"
    if staged.exists():
        shutil.rmtree(staged)
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype)
    model.to(saved_dtype or torch.float32).save_pretrained(staged)
    tokenizer.save_pretrained(staged)  # tokenizer files + chat_template.jinja
    save_config(cfg, staged / "merge_config.yaml", extra={"base_model": base, "saved_dtype": str(saved_dtype)})
    if out.exists():
        shutil.rmtree(out)
    os.replace(staged, out)
    return out
