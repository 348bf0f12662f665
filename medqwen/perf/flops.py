"""FLOPs of a LoRA train step and the GPU's measured matmul peak, for MFU."""

from __future__ import annotations


# Linear layers of one Qwen3/Llama decoder layer: name -> (in_features, out_features) as a function of the config.
def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder layer."""
    h, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def lora_train_flops(config, lengths: list[int], lora_r: int, targets: list[str]) -> float:
    """Useful FLOPs of one forward+backward pass of LoRA training over sequences of `lengths` (real tokens only).

    A matmul with a weight of P parameters costs 2P FLOPs per token forward. Backward computes the input gradient
    (another 2P) and, only for trainable weights, the weight gradient (2P more). So per token:

        frozen linear layers and the LM head (tied embeddings, frozen):   4 * P_frozen
        LoRA matrices A (r x in) and B (out x r), trainable:              6 * P_lora
        attention scores and values, causal, per sequence of length L:    3 * 4 * d_attn * L(L+1)/2 per layer
          (QK^T and PV are 2*d_attn FLOPs per query-key pair each; backward is twice forward)

    Recomputation (gradient checkpointing), padding and the optimizer step are not useful work and are not
    counted, so MFU falls when a recipe recomputes or pads. Norms, RoPE, SwiGLU and the loss are < 1% and left out.
    """
    shapes = projection_shapes(config)
    n_layers = config.num_hidden_layers
    frozen = sum(i * o for i, o in shapes.values()) * n_layers + config.vocab_size * config.hidden_size
    lora = sum(lora_r * (i + o) for name, (i, o) in shapes.items() if name in targets) * n_layers
    tokens = sum(lengths)
    d_attn = shapes["q_proj"][1]
    pairs = sum(n * (n + 1) / 2 for n in lengths)
    return (4 * frozen + 6 * lora) * tokens + 3 * 4 * d_attn * pairs * n_layers


def forward_flops(config, lengths: list[int]) -> float:
    """FLOPs of one forward pass without gradients (a log-prob pass) over sequences of `lengths`: 2 per weight
    per token, plus causal attention (LoRA's few parameters are left out, as are norms and activations)."""
    shapes = projection_shapes(config)
    n_layers = config.num_hidden_layers
    frozen = sum(i * o for i, o in shapes.values()) * n_layers + config.vocab_size * config.hidden_size
    pairs = sum(n * (n + 1) / 2 for n in lengths)
    return 2 * frozen * sum(lengths) + 4 * shapes["q_proj"][1] * pairs * n_layers


def decode_bytes_per_step(config, batch: int, context: int, dtype_bytes: int = 2) -> float:
    """Bytes one decode step must read from GPU memory at the least: every weight once (the embedding table only
    as the tied LM head) and the KV cache of `batch` sequences of `context` tokens."""
    shapes = projection_shapes(config)
    weights = sum(i * o for i, o in shapes.values()) * config.num_hidden_layers + config.vocab_size * config.hidden_size
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_token = 2 * config.num_key_value_heads * head_dim * config.num_hidden_layers
    return dtype_bytes * (weights + kv_per_token * batch * context)


def memory_bandwidth_gbs(n_bytes: int = 2 * 2**30, repeats: int = 10) -> float | None:
    """Measured device-to-device copy rate of this GPU (GB/s, bytes read plus written); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * n_bytes * repeats / (start.elapsed_time(end) / 1000) / 1e9


def matmul_peak_tflops(n: int = 8192, repeats: int = 10) -> float | None:
    """Measured bf16 matmul rate of this GPU (TFLOP/s) on random n x n x n products; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    return 2 * n**3 / seconds / 1e12
