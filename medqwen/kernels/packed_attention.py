"""Attention over packed rows: many sequences in one row, none attending to another, no padding, no T x T mask.

Registered with transformers as `attn_implementation="varlen"` (`register_attention()`), it serves two callers:

    training   TRL's padding-free collator packs conversations into one row and adds `cu_seq_lens_q` (their
               boundaries); each conversation gets causal attention over itself (medqwen.kernels.fused_lora, the
               trainer).
    scoring    C-Eval questions of one subject share their five-shot head. The head runs once; its keys/values
               are attached to the attention modules (`SharedPrefix`), and each packed question attends to the
               head and causally to itself (medqwen.exams.backends.HFBackend). Positions continue after the head.

On CUDA in fp16/bf16 both are one FlashAttention varlen call (torch.nn.attention.varlen); elsewhere a loop of SDPA
calls per sequence computes the same thing, which is what the CPU tests check against the plain model.
"""

from __future__ import annotations

import inspect
import itertools
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

VARLEN = "varlen"


def _varlen_kernel():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9: per-sequence SDPA
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


# Resolved once at import: inside a compiled layer, imports and signature inspection would break the graph.
_VARLEN_ATTN, _VARLEN_PARAMS = _varlen_kernel()


def flash_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale):
    """FlashAttention over (tokens, heads, dim) tensors; sequence i is rows cu[i]:cu[i+1] of q and of k/v.

    Causal; when a sequence has more keys than queries the mask is aligned bottom-right (FlashAttention's rule),
    so its queries are the last tokens and see every key before them.
    """
    kernel, params = _VARLEN_ATTN, _VARLEN_PARAMS
    if "enable_gqa" not in params and k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    extra = {"enable_gqa": True} if "enable_gqa" in params else {}
    extra.update({"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)})
    return kernel(q.contiguous(), k.contiguous(), v.contiguous(), cu_q, cu_k, max_q, max_k, scale=scale, **extra)


def sdpa_per_sequence(q, k, v, cu_q, cu_k, scale):
    """The same as flash_varlen with one SDPA call per sequence (CPU, or no varlen kernel)."""
    outs = []
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bq) - 1):
        qs, ks, vs = (t[a:b].transpose(0, 1).unsqueeze(0) for t, a, b in
                      ((q, bq[i], bq[i + 1]), (k, bk[i], bk[i + 1]), (v, bk[i], bk[i + 1])))
        n_q, n_k = qs.shape[2], ks.shape[2]
        # bottom-right causal: query j (of n_q) sees keys 0 .. n_k - n_q + j
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(diagonal=n_k - n_q)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale,
                                                   enable_gqa=ks.shape[1] != qs.shape[1])[0].transpose(0, 1))
    return torch.cat(outs, dim=0)


class SharedPrefix:
    """Keys/values of a head (e.g. the five-shot examples) that every packed sequence attends to first.

    `layers[i]` is (keys, values) of decoder layer i, each (prefix_len, kv_heads, head_dim). Inside
    `with head.attached(model):` each attention module holds its layer's pair (an attribute, not a per-layer
    lookup, so one compiled graph serves every layer); `layout(lengths)` gives the packed forward's kwargs.
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        self.layers = layers
        self.length = layers[0][0].shape[0]

    @classmethod
    def from_cache(cls, cache) -> "SharedPrefix":
        """From a transformers cache of one sequence (`past_key_values` of a forward pass with use_cache=True)."""
        return cls([(layer.keys[0].transpose(0, 1), layer.values[0].transpose(0, 1)) for layer in cache.layers])

    @contextmanager
    def attached(self, model):
        """Give every attention module of `model` its layer's head keys/values for the duration."""
        modules = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "is_causal")]
        for m in modules:
            m.shared_prefix_kv = self.layers[m.layer_idx]
        try:
            yield
        finally:
            for m in modules:
                del m.shared_prefix_kv

    def layout(self, lengths: list[int], device) -> dict:
        """The kwargs a packed forward pass needs: positions after the head, query/key boundaries, maxima, and the
        key gather index."""
        p = self.length
        positions = torch.cat([torch.arange(p, p + n) for n in lengths])[None].to(device)
        cu_q = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
        cu_k = torch.tensor([0, *[p + n for n in lengths]], device=device).cumsum(0).to(torch.int32)
        head = torch.arange(p)
        # rows 0..p-1 of cat([head, packed]) are the head; row p + t is packed token t (built on the CPU:
        # hundreds of tiny device tensors would cost more launches than the forward pass has layers)
        starts = [0, *itertools.accumulate(lengths)][:-1]
        index = torch.cat([torch.cat([head, p + torch.arange(a, a + n)]) for a, n in zip(starts, lengths)])
        index = index.to(device)
        return {"position_ids": positions, "cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k,
                "max_length_q": max(lengths), "max_length_k": p + max(lengths), "prefix_index": index}


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             **kwargs):
    """Causal attention that never crosses the sequences packed in one row (boundaries in `cu_seq_lens_q`).

    Inside `SharedPrefix.attached`, each sequence also attends to the head's keys/values of this layer.
    Without packing information (no `cu_seq_lens_q`, or a padding mask) it is transformers' SDPA attention, so
    packed rows must come with `cu_seq_lens_q` (TRL's padding-free collator adds them to every batch).
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or attention_mask is not None or query.shape[0] != 1 or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
    cu = cu.to(device=q.device, dtype=torch.int32)
    cu_k, max_q = cu, int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
    max_k = max_q
    head = getattr(module, "shared_prefix_kv", None)
    if head is not None:
        head_k, head_v = head
        index = kwargs["prefix_index"]
        k, v = torch.cat([head_k, k])[index], torch.cat([head_v, v])[index]
        cu_k, max_k = kwargs["cu_seq_lens_k"], int(kwargs["max_length_k"])
    # FlashAttention takes half precision only: fp32 on CUDA (e.g. an exactness check) goes the SDPA way
    if q.is_cuda and _VARLEN_ATTN is not None and q.dtype in (torch.float16, torch.bfloat16):
        out = flash_varlen(q, k, v, cu, cu_k, max_q, max_k, scaling)
    else:
        out = sdpa_per_sequence(q, k, v, cu, cu_k, scaling)
    return out.unsqueeze(0), None


def _varlen_mask(*args, attention_mask=None, **kwargs):
    """No mask for packed or purely causal rows (the attention uses cu_seqlens / is_causal); SDPA's otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def skip_mask_building(model) -> bool:
    """Padding-free rows need no attention mask (the varlen kernel takes `cu_seq_lens_q`): hand the decoder an
    empty mask per attention kind, so transformers does not build one. Building it reads the position ids back
    to the host to detect packing (`find_packed_sequence_indices`), which makes the host wait for the GPU at the
    start of every forward instead of queuing work ahead. Returns whether the model's decoder takes such masks."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    kinds = getattr(getattr(decoder, "config", None), "layer_types", None)
    if decoder is None or not kinds:
        return False

    def no_mask_for_padding_free_rows(module, args, kwargs):
        if kwargs.get("attention_mask") is None and kwargs.get("cu_seq_lens_q") is not None:
            kwargs["attention_mask"] = dict.fromkeys(set(kinds))  # each layer gets None: the varlen path
        return args, kwargs

    decoder.register_forward_pre_hook(no_mask_for_padding_free_rows, with_kwargs=True)
    return True


def register_attention() -> None:
    """Make attn_implementation="varlen" known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, _varlen_mask)
