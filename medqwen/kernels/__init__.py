"""Kernels below both training and scoring: each computes the same function as the plain transformers/PEFT path.

    fused_lora.py        fused LoRA linear layers and per-layer torch.compile (the trainer's fast path)
    packed_attention.py  attention over packed rows (varlen), also the exam scorer's shared-prefix KV reuse
    decode.py            sampling with each decode step replayed as one CUDA graph
"""
