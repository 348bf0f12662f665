"""The fast path computes what the plain PEFT/transformers path computes (CPU, fp32, tiny model).

GPU-only pieces are not exercised here: Liger kernels, the FlashAttention varlen kernel (CPU runs the same
masking through per-sequence SDPA) and Inductor on CUDA; benchmark/perf_train.py runs them on a GPU.
"""

import copy
from dataclasses import replace

import pytest
import torch

from medqwen.config import TrainConfig
from medqwen.fast_lora import LoraLinearFunction, _fused_lora_forward, decoder_layers, fuse_lora, set_recompute_layers
from medqwen.packed_attention import VARLEN, register_attention
from medqwen.modeling import random_qwen3

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_pair(dropout: float, keep_dropped_inputs=()):
    """The same random tiny Qwen3 with LoRA (non-zero B), plain and fused."""
    from peft import LoraConfig, get_peft_model

    model = random_qwen3("tiny", vocab_size=300, seed=1)
    plain = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS))
    for name, param in plain.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero, which would hide errors in the adapter path
            torch.nn.init.normal_(param, std=0.05)
    fused = copy.deepcopy(plain)
    assert fuse_lora(fused, keep_dropped_inputs) == 2 * len(TARGETS)
    return plain, fused


def loss_and_grads(model, ids, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout, keep_dropped_inputs", [(0.0, ()), (0.05, ()), (0.05, TARGETS)])
def test_fused_lora_matches_peft(dropout, keep_dropped_inputs):
    plain, fused = peft_pair(dropout, keep_dropped_inputs)
    assert sum(getattr(m, "keep_dropped_input", False) for m in fused.modules()) == (
        2 * len(TARGETS) if keep_dropped_inputs else 0)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(fused, mode)()
        loss_p, grads_p = loss_and_grads(plain, ids, seed=3)
        loss_f, grads_f = loss_and_grads(fused, ids, seed=3)  # same seed: same dropout masks as nn.Dropout
        torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=1e-6)
        assert grads_f.keys() == grads_p.keys() and len(grads_p) == 2 * 2 * len(TARGETS)
        for name in grads_p:
            torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)


def test_unknown_layer_to_keep_is_an_error():
    with pytest.raises(ValueError, match=r"\['q_porj'\]: no LoRA layer has that name"):
        peft_pair(0.05, ["q_proj", "q_porj"])


@pytest.mark.parametrize("keep_dropped", [False, True])
def test_fused_lora_gradcheck_float64(keep_dropped):
    """Analytic backward of the fused function against finite differences, dropout mask included."""
    torch.manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64)
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, a, b):
        torch.manual_seed(7)  # the same dropout mask on every evaluation
        return LoraLinearFunction.apply(x, weight, None, a, b, 2.0, 0.3, keep_dropped)

    assert torch.autograd.gradcheck(fn, (x, a, b))


def test_disabled_adapter_falls_back_to_base_model():
    plain, fused = peft_pair(0.0)
    ids = torch.randint(0, 300, (1, 16))
    with fused.disable_adapter(), torch.no_grad():
        off = fused(input_ids=ids).logits
    with torch.no_grad():
        base = plain.get_base_model()
        with plain.disable_adapter():
            expected = base(input_ids=ids).logits
        on = fused(input_ids=ids).logits
    torch.testing.assert_close(off, expected)
    assert not torch.allclose(on, off)  # the adapter is really applied when enabled


def test_selective_recompute_keeps_the_math():
    """Checkpointing only the first layer changes which activations are stored, not the loss or gradients."""
    plain, fused = peft_pair(0.0)
    fused.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    set_recompute_layers(fused, 1)
    assert [layer.gradient_checkpointing for layer in decoder_layers(fused)] == [True, False]
    plain.train(), fused.train()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    loss_p, grads_p = loss_and_grads(plain, ids, seed=0)
    loss_f, grads_f = loss_and_grads(fused, ids, seed=0)
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-5, atol=1e-6)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)


def per_example_losses(logits, labels):
    """Mean next-token loss of each example (labels -100 ignored)."""
    shift = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], reduction="none", ignore_index=-100)
    return shift[labels[1:] != -100].mean()


def test_varlen_packed_loss_equals_unpacked():
    """Three conversations packed in one row (positions restart, cu_seqlens) vs each run alone with SDPA."""
    register_attention()
    plain, fused = peft_pair(0.0)
    plain.eval(), fused.eval()
    fused.get_base_model().set_attn_implementation(VARLEN)
    gen = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, 300, (n,), generator=gen) for n in (7, 19, 12)]
    packed = torch.cat(seqs)[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    cu = torch.tensor([0, 7, 26, 38], dtype=torch.int32)
    with torch.no_grad():
        logits = fused(input_ids=packed, position_ids=position_ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                       max_length_q=19, max_length_k=19).logits[0]
        for i, seq in enumerate(seqs):
            alone = plain(input_ids=seq[None]).logits[0]
            piece = logits[cu[i]:cu[i + 1]]
            torch.testing.assert_close(piece, alone, rtol=1e-4, atol=1e-5)
            assert per_example_losses(piece, seq).item() == pytest.approx(per_example_losses(alone, seq).item(),
                                                                           rel=1e-4)


def conversations(n: int):
    words = "the patient has a mild fever and should rest drink water see a doctor if it lasts".split()
    rng = torch.Generator().manual_seed(0)
    pick = lambda k: " ".join(words[i] for i in torch.randint(0, len(words), (k,), generator=rng))  # noqa: E731
    return [[{"role": "user", "content": pick(4 + i)}, {"role": "assistant", "content": pick(6 + 2 * i)}]
            for i in range(n)]


def train_adapter(tiny_model_dir, tmp_path, **overrides):
    from datasets import Dataset

    from medqwen.training import build_trainer

    settings = dict(model=str(tiny_model_dir), output_dir=str(tmp_path), max_steps=3,
                    per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=1e-3,
                    lora_dropout=0.0, max_seq_len=128, report_to="none", eval_ratio=0.0, logging_steps=100,
                    eval_steps=100, seed=0)
    cfg = TrainConfig(**{**settings, **overrides})
    trainer = build_trainer(cfg, Dataset.from_list([{"messages": c} for c in conversations(8)]))
    fused = sum(getattr(m.forward, "__func__", None) is _fused_lora_forward for m in trainer.model.modules())
    assert fused == (2 * len(TARGETS) if cfg.fused_lora else 0)  # the trainer really runs the path under test
    # packing alone picks varlen attention (no T x T mask over the packed row)
    assert trainer.model.config._attn_implementation == (VARLEN if cfg.packing else "sdpa")
    result = trainer.train()
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    return result.training_loss, weights


def test_fast_path_trains_the_same_adapter(tiny_model_dir, tmp_path):
    """Every step sees all 8 conversations, so padded/plain and packed/fused/varlen steps are the same math.

    Adam ignores a constant scale of a gradient, so this catches wrong gradients, not mis-scaled ones; the
    gradients themselves are compared in test_fused_lora_matches_peft."""
    loss_plain, plain = train_adapter(tiny_model_dir, tmp_path / "plain", fused_lora=False)
    loss_fast, fast = train_adapter(tiny_model_dir, tmp_path / "fast", packing=True)  # the default fast path
    assert loss_fast == pytest.approx(loss_plain, rel=1e-4)
    assert plain.keys() == fast.keys() and len(plain) == 2 * 2 * len(TARGETS)
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-3, atol=1e-5, msg=name)
    assert any(w.abs().max() > 0 for n, w in plain.items() if "lora_B" in n)  # the adapter really trained


def test_activation_memory_budget_reaches_the_compiler(tiny_model_dir, tmp_path):
    """With compiled layers the budget is handed to the partitioner, which decides what backward recomputes."""
    import torch._functorch.config as functorch_config
    from datasets import Dataset

    from medqwen.training import build_trainer

    cfg = TrainConfig(model=str(tiny_model_dir), output_dir=str(tmp_path), report_to="none",
                      eval_ratio=0.0, compile_layers=True, activation_memory_budget=0.3)
    before = functorch_config.activation_memory_budget
    try:
        trainer = build_trainer(cfg, Dataset.from_list([{"messages": c} for c in conversations(2)]))
        assert functorch_config.activation_memory_budget == 0.3
        assert all(layer._compiled_call_impl is not None for layer in decoder_layers(trainer.model))
        # process-wide: a trainer built next without a budget does not keep the first one's
        build_trainer(replace(cfg, activation_memory_budget=1.0, output_dir=str(tmp_path / "next")),
                      Dataset.from_list([{"messages": c} for c in conversations(2)]))
        assert functorch_config.activation_memory_budget == 1.0
    finally:
        functorch_config.activation_memory_budget = before


def test_compiled_layers_draw_the_eager_dropout_masks(tiny_model_dir, tmp_path):
    """With dropout on, compiled layers train the adapter eager layers train: torch's dropout kernel draws the
    masks in both (eager_dropout_rng), so the compiled path is checked against the eager one, dropout included."""
    import torch._inductor.config as inductor_config

    before = inductor_config.fallback_random
    try:
        eager_loss, eager = train_adapter(tiny_model_dir, tmp_path / "eager", packing=True, lora_dropout=0.3)
        compiled_loss, compiled = train_adapter(tiny_model_dir, tmp_path / "compiled", packing=True,
                                                lora_dropout=0.3, compile_layers=True)
    finally:
        inductor_config.fallback_random = before
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-3, atol=1e-5, msg=name)
