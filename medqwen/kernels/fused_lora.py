"""Fused LoRA linear layers and per-layer compile: the kernels of the trainer's fast path.

Each piece computes the same function as the plain PEFT/transformers path (tests/test_fast_path.py checks the
losses and the adapter after optimizer steps on CPU). Which of them a run uses, and the process-wide torch
settings they need, are decided in medqwen.train.fast_path; benchmark/PERF.md records what each one bought on a GPU.

    fuse_lora(model)          LoRA forward/backward as one autograd function (no fp32 copies of the input, scale
                              and add folded into one addmm, kept in place when compiled: addmm_)
    compile_layers(model)     torch.compile each decoder layer (one graph shared by all layers)
    set_recompute_layers(model, n)   with gradient checkpointing: recompute only the first n decoder layers
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------
# Fused LoRA linear


@torch.library.custom_op("medqwen::addmm_", mutates_args={"out"})
def _addmm_op(out: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, alpha: float) -> None:
    out.addmm_(m1, m2, alpha=alpha)


def addmm_(out: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, alpha: float, compiled_in_place: bool
           ) -> torch.Tensor:
    """out += alpha * m1 @ m2, in place; returns out.

    Compiled, `out.addmm_` becomes a functional addmm, which cuBLAS runs as a copy of `out` followed by the
    product: a read and a write of every base output. With `compiled_in_place` it is called as an operator that
    mutates `out`, which Inductor's re-inplacing pass keeps in place. Eagerly, the plain method either way."""
    if compiled_in_place and torch.compiler.is_compiling():
        _addmm_op(out, m1, m2, alpha)
        return out
    return out.addmm_(m1, m2, alpha=alpha)


class LoraLinearFunction(torch.autograd.Function):
    """y = x W^T (+ bias) + scaling * dropout(x) A^T B^T, with W (and bias) frozen.

    PEFT computes the same with separate modules: under bf16 autocast it copies x to fp32 for its adapter,
    drops out the copy, casts it back, and writes B's output, the scaled output and the sum as three more
    tensors; backward mirrors each. Here x stays in its dtype, the adapter output is added into the base
    output by one addmm, and backward saves x (shared by q/k/v and by gate/up), a bool dropout mask and the
    rank-r product. With `keep_dropped` it saves the dropped-out x instead of x, so backward does not redo the
    dropout (one pass over the input less, at the cost of a copy of the input per adapter instead of one shared).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float, keep_dropped: bool = False,
                compiled_in_place: bool = True):
        x2 = x.reshape(-1, x.shape[-1])
        a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        out = F.linear(x2, weight.to(x.dtype), bias)
        if p > 0:
            xd, mask = torch.native_dropout(x2, p, True)  # same draw as nn.Dropout (PEFT's lora_dropout)
        else:
            xd, mask = x2, None
        u = xd @ a.t()  # (tokens, r)
        out = addmm_(out.to(x.dtype), u, b.t(), scaling, compiled_in_place)  # base + scaling u B^T, one pass
        ctx.dropped_saved = keep_dropped and mask is not None
        ctx.save_for_backward(xd if ctx.dropped_saved else x2, mask, u, weight, lora_a, lora_b)
        ctx.scaling, ctx.p, ctx.x_shape, ctx.compiled_in_place = scaling, p, x.shape, compiled_in_place
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x2, mask, u, weight, lora_a, lora_b = ctx.saved_tensors  # x2: the dropped-out input if dropped_saved
        s, p = ctx.scaling, ctx.p
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(x2.dtype)
        a, b = lora_a.to(x2.dtype), lora_b.to(x2.dtype)
        grad_b = (g.t() @ u).mul_(s)  # (out, r)
        du = (g @ b).mul_(s)  # (tokens, r)
        redo_dropout = mask is not None and not ctx.dropped_saved
        xd = torch.ops.aten.native_dropout_backward(x2, mask, 1.0 / (1.0 - p)) if redo_dropout else x2
        grad_a = du.t() @ xd  # (r, in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight.to(x2.dtype)
            if mask is None:
                addmm_(grad_x, du, a, 1.0, ctx.compiled_in_place)
            else:
                grad_x.add_(torch.ops.aten.native_dropout_backward(du @ a, mask, 1.0 / (1.0 - p)))
            grad_x = grad_x.view(ctx.x_shape)
        return grad_x, None, None, grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype), None, None, None, None


def _fused_lora_forward(self, x, *args, **kwargs):
    """Forward of a peft.tuners.lora.Linear through LoraLinearFunction; PEFT's own forward where it must."""
    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    base = self.base_layer
    plain = (self.disable_adapters or self.merged or name is None or args or kwargs
             or name not in self.lora_A or self.use_dora.get(name, False)
             or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)
             or not isinstance(base, torch.nn.Linear))
    if plain:
        return type(self).forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = dropout.p if isinstance(dropout, torch.nn.Dropout) and self.training else 0.0
    return LoraLinearFunction.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                                    float(self.scaling[name]), float(p), self.keep_dropped_input,
                                    self.compiled_in_place)


def fuse_lora(model, keep_dropped_inputs: Sequence[str] = (), compiled_in_place: bool = True) -> int:
    """Route every PEFT LoRA Linear of `model` through LoraLinearFunction; returns how many were switched.
    Layers named in `keep_dropped_inputs` (e.g. "q_proj") keep their dropped-out input for backward;
    `compiled_in_place`: compiled layers add the adapter's output into the base output in place (see addmm_)."""
    from peft.tuners.lora import Linear as LoraLinear

    count, names = 0, set()
    for name, module in model.named_modules():
        if type(module) is LoraLinear:  # subclasses (quantized layers) keep their own forward
            short_name = name.rsplit(".", 1)[-1]
            module.forward = types.MethodType(_fused_lora_forward, module)
            module.keep_dropped_input = short_name in keep_dropped_inputs
            module.compiled_in_place = compiled_in_place
            names.add(short_name)
            count += 1
    unknown = sorted(set(keep_dropped_inputs) - names)
    if unknown:  # a typo would otherwise silently keep nothing
        raise ValueError(f"lora_keep_dropped_inputs {unknown}: no LoRA layer has that name; "
                         f"the model's LoRA layers are {sorted(names)}")
    return count


# ----------------------------------------------------------------------------------------------------------
# Compile and selective recompute


def decoder_layers(model) -> list:
    """The repeated decoder blocks of a (PEFT-wrapped) causal LM."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place; with inlined modules all layers share one compiled graph."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def set_recompute_layers(model, n: int) -> None:
    """Keep gradient checkpointing on the first `n` decoder layers only (run after the trainer enabled it)."""
    for i, layer in enumerate(decoder_layers(model)):
        if layer.gradient_checkpointing:
            layer.gradient_checkpointing = i < n
