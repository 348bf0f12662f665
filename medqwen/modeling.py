"""Load models the same way everywhere: local folder (or hub id), optional LoRA adapter, right device/dtype; random
Qwen3 models of real shapes for tests and benchmarks. Which folder to load is medqwen.runs' question."""

from __future__ import annotations

from pathlib import Path


def pick_device_dtype(device: str | None = None, dtype: str | None = None):
    """CUDA with bf16 when available, else CPU with fp32 (bf16 matmuls are slow or missing on most CPUs)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return torch.device(device), getattr(torch, dtype)


def load_model(path: str | Path, adapter: str | Path | None = None, device: str | None = None,
               dtype: str | None = None, merge: bool = False):
    """A causal LM in eval mode, with a PEFT adapter applied (and optionally merged) when given.

    The folders are checked once, where the model choice is resolved (medqwen.runs.resolve_model)."""
    from transformers import AutoModelForCausalLM

    torch_device, torch_dtype = pick_device_dtype(device, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    return model.to(torch_device).eval()


# Shapes for randomly initialised models: unit tests ("tiny") and speed/memory benchmarks ("qwen3-4b").
# Speed and memory do not depend on weight values, so a random model of the real shape measures them honestly.
QWEN3_SHAPES = {
    # head_dim >= 32: vLLM's CPU attention rejects smaller heads.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=5_000_000.0,
                     max_position_embeddings=262144),
}


def random_qwen3(shape: str = "tiny", vocab_size: int | None = None, seed: int = 0, **overrides):
    """A randomly initialised Qwen3ForCausalLM of a named shape (see QWEN3_SHAPES)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    kwargs = dict(QWEN3_SHAPES[shape], tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=None,
                  attention_bias=False)
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(**kwargs))
