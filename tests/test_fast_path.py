"""The fast path computes what the plain PEFT/transformers path computes (CPU, fp32, tiny model).

GPU-only pieces are not exercised here: Liger kernels, the FlashAttention varlen kernel (CPU runs the same
masking through per-sequence SDPA) and Inductor on CUDA; benchmark/perf_train.py runs them on a GPU.
"""

import copy
from dataclasses import replace

import pytest
import torch

from medqwen.kernels.fused_lora import (
    LoraLinearFunction,
    _fused_lora_forward,
    decoder_layers,
    fuse_lora,
    set_recompute_layers,
)
from medqwen.kernels.packed_attention import VARLEN, register_attention
from medqwen.modeling import random_qwen3
from medqwen.train.config import TrainConfig

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


@pytest.mark.parametrize("in_place", [True, False])
def test_compiled_fused_lora_adds_the_adapter_in_place(in_place):
    """Compiled, the adapter's product is added into the base output in place: Inductor's functional addmm
    would first copy every base output (a read and a write of tokens x out_features per LoRA layer). Off (the
    24gb preset's setting), the functional addmm. The gradients equal the eager function's either way."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    weight = torch.randn(12, 16)
    a, b = torch.randn(4, 16, requires_grad=True), torch.randn(12, 4, requires_grad=True)

    def loss(x):
        return LoraLinearFunction.apply(x, weight, None, a, b, 2.0, 0.0, False, in_place).square().sum()

    x = torch.randn(10, 16, requires_grad=True)
    compiled = torch.compile(loss, dynamic=True)
    _, (forward_code, *_) = run_and_get_code(lambda: compiled(x).backward())
    assert ("torch.ops.medqwen.addmm_.default(" in forward_code) == in_place
    assert ("extern_kernels.addmm(" in forward_code) != in_place
    got = [t.grad.clone() for t in (x, a, b)]
    for t in (x, a, b):
        t.grad = None
    loss(x).backward()
    for g, t in zip(got, (x, a, b)):
        torch.testing.assert_close(g, t.grad, rtol=1e-4, atol=1e-4)


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

    from medqwen.train.sft import build_trainer

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
    loss_fast, fast = train_adapter(tiny_model_dir, tmp_path / "fast", packing=True, fused_lora=True)
    assert loss_fast == pytest.approx(loss_plain, rel=1e-4)
    assert plain.keys() == fast.keys() and len(plain) == 2 * 2 * len(TARGETS)
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-3, atol=1e-5, msg=name)
    assert any(w.abs().max() > 0 for n, w in plain.items() if "lora_B" in n)  # the adapter really trained


def test_activation_memory_budget_reaches_the_compiler(tiny_model_dir, tmp_path):
    """With compiled layers the budget is handed to the partitioner, which decides what backward recomputes."""
    import torch._functorch.config as functorch_config
    from datasets import Dataset

    from medqwen.train.sft import build_trainer

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
    # dropout really acts: without it the same steps train another adapter (else both paths could ignore it)
    no_dropout_loss, no_dropout = train_adapter(tiny_model_dir, tmp_path / "no-dropout", packing=True, lora_dropout=0.0)
    assert no_dropout_loss != pytest.approx(eager_loss, rel=1e-4)
    assert max((no_dropout[n] - eager[n]).abs().max() for n in eager) > 1e-3


def spread_conversations(n: int, seed: int = 0):
    """Conversations of a real length spread: lognormal word counts, 3 to ~90 words per turn."""
    import random

    words = "the patient has a mild fever and should rest drink water see a doctor if it lasts".split()
    rng = random.Random(seed)
    turn = lambda: " ".join(rng.choice(words) for _ in range(max(3, int(rng.lognormvariate(2.5, 0.9)))))  # noqa: E731
    return [[{"role": "user", "content": turn()}, {"role": "assistant", "content": turn()}] for _ in range(n)]


def batch_conversations(inputs) -> list[tuple]:
    """The conversations (token ids) of one micro-batch, padded rows or one padding-free row."""
    ids = inputs["input_ids"]
    if "cu_seq_lens_q" in inputs:
        cu = inputs["cu_seq_lens_q"].tolist()
        return [tuple(ids[0, a:b].tolist()) for a, b in zip(cu[:-1], cu[1:])]
    return [tuple(row[mask.bool()].tolist()) for row, mask in zip(ids, inputs["attention_mask"])]


def run_recipe(tiny_model_dir, tmp_path, data, **overrides):
    """3 optimizer steps of `data` (lora_dropout 0: dropout draws depend on tensor shapes, not on the recipe)."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from medqwen.train.fast_path import resolve_fast_path
    from medqwen.train.sft import build_trainer

    settings = dict(model=str(tiny_model_dir), output_dir=str(tmp_path), max_steps=3,
                    per_device_train_batch_size=4, gradient_accumulation_steps=3, learning_rate=1e-3,
                    lora_dropout=0.0, max_seq_len=128, report_to="none", eval_ratio=0.0, logging_steps=1,
                    eval_steps=100, seed=0)
    cfg, _ = resolve_fast_path(TrainConfig(**{**settings, **overrides}),
                               {"cuda": False, "varlen": False, "triton": False})
    trainer = build_trainer(cfg, Dataset.from_list([{"messages": c} for c in data]))
    seen, steps = [], []
    training_step = trainer.training_step

    def recording_step(model, inputs, num_items_in_batch=None):  # what each micro-batch of a step trains on
        seen.extend(batch_conversations(inputs))
        return training_step(model, inputs, num_items_in_batch)

    trainer.training_step = recording_step

    class PerStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(list(seen))
            seen.clear()

    trainer.add_callback(PerStep())
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    return cfg, steps, losses, weights, trainer


def test_fast_path_keeps_the_recipe_on_spread_lengths(tiny_model_dir, tmp_path):
    """The fast path's optimizer steps are the original's: the same 12 conversations in the same order, the same
    loss (normalised over the step's assistant tokens) and the same adapter after 3 steps (fp32; tolerance
    rel 1e-4 on the logged losses, which are rounded to 4 digits, and rtol 1e-3 / atol 1e-5 on the weights).
    Also with a token budget that splits each micro-batch into several forwards."""
    from medqwen.train.fast_path import FORWARD_CHUNKS, PaddingFreeCollator, split_by_tokens

    data = spread_conversations(40)
    _, steps_o, losses_o, weights_o, _ = run_recipe(tiny_model_dir, tmp_path / "original", data)
    lengths = sorted(len(ids) for step in steps_o for ids in step)
    assert lengths[-1] > 4 * lengths[0], "the data must have a real length spread"
    assert [len(s) for s in steps_o] == [12, 12, 12]
    assert any(w.abs().max() > 0 for n, w in weights_o.items() if "lora_B" in n)  # the adapter really trained
    budget = max(lengths) + 10
    assert all(len(split_by_tokens([len(c) for c in step], budget)) > 1 for step in steps_o)
    for overrides in ({"fast_path": "speed"}, {"fast_path": "24gb", "max_tokens_per_forward": budget}):
        name = "-".join(map(str, overrides.values()))
        cfg, steps_f, losses_f, weights_f, trainer = run_recipe(tiny_model_dir, tmp_path / name, data, **overrides)
        assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.padding_free) == (12, 1, True)
        assert trainer.model.config._attn_implementation == VARLEN
        assert isinstance(trainer.data_collator, PaddingFreeCollator)
        assert (FORWARD_CHUNKS in trainer.data_collator(trainer.train_dataset.select(range(12)).to_list())
                ) == ("max_tokens_per_forward" in overrides), name
        assert steps_f == steps_o, name  # the same conversations, in the same order, in every optimizer step
        assert losses_f == pytest.approx(losses_o, rel=1e-4), name
        assert weights_f.keys() == weights_o.keys()
        for key in weights_o:
            torch.testing.assert_close(weights_f[key], weights_o[key], rtol=1e-3, atol=1e-5, msg=f"{name} {key}")


def test_fast_path_choice_by_machine():
    """auto: the largest fast path that fits the GPU; off on CPU, on small cards and without a kernel (with a
    message saying what is missing); a named path as asked (CUDA-only parts off on CPU); off is off."""
    from medqwen.train.fast_path import choose_fast_path

    assert choose_fast_path("auto", True, 139.8, True, True)[0] == "speed"
    assert choose_fast_path("auto", True, 79.2, True, True)[0] == "80gb"
    assert choose_fast_path("auto", True, 23.6, True, True)[0] == "24gb"
    name, why = choose_fast_path("auto", True, 15.7, True, True)
    assert name == "off" and "below" in why
    name, why = choose_fast_path("auto", False, None, False, False)
    assert name == "off" and "no CUDA" in why
    name, why = choose_fast_path("auto", True, 139.8, False, True)
    assert name == "off" and "FlashAttention varlen" in why and "falling back" in why
    name, why = choose_fast_path("speed", True, 139.8, True, False)
    assert name == "off" and "Triton" in why
    name, why = choose_fast_path("24gb", False, None, False, False)
    assert name == "24gb" and "CUDA-only parts off" in why
    assert choose_fast_path("off", True, 139.8, True, True)[0] == "off"
    with pytest.raises(ValueError, match="choose auto, off"):
        choose_fast_path("warp", True, 139.8, True, True)


def test_off_keeps_the_original_fields_and_cpu_auto_changes_nothing():
    from medqwen.train.fast_path import resolve_fast_path

    cfg = TrainConfig()
    assert resolve_fast_path(cfg, {"cuda": False, "varlen": True, "triton": True})[0] == replace(cfg, fast_path="off")
    off = replace(cfg, fast_path="off")
    assert resolve_fast_path(off, {"cuda": True, "varlen": True, "triton": True, "gpu_gib": 140})[0] == off
    fast, why = resolve_fast_path(cfg, {"cuda": True, "varlen": True, "triton": True, "gpu_gib": 23.6})
    assert (fast.fast_path, fast.per_device_train_batch_size, fast.gradient_accumulation_steps) == ("24gb", 64, 1)
    assert "24gb" in why and fast.learning_rate == cfg.learning_rate and fast.lora_r == cfg.lora_r


@pytest.mark.parametrize("with_labels", [True, False])
def test_padding_free_collator_builds_trls_batch(with_labels):
    """The numpy collator gives TRL's padding-free batch key for key (values and dtypes), and each forward chunk
    is TRL's batch of that chunk's conversations."""
    import random

    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from medqwen.train.fast_path import FORWARD_CHUNKS, PaddingFreeCollator, split_by_tokens

    rng = random.Random(0)
    examples = []
    for _ in range(23):
        ids = [rng.randrange(5, 300) for _ in range(rng.choice([1, 2, rng.randrange(3, 120)]))]
        example = {"input_ids": ids}
        if with_labels:  # as TRL's dataset preparation leaves them: -100 outside the assistant's tokens
            example["labels"] = [t if rng.random() < 0.7 else -100 for t in ids]
        examples.append(example)
    trl = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    budget = 200
    batch = PaddingFreeCollator(pad_token_id=0, max_tokens=budget)(examples)
    ranges = split_by_tokens([len(e["input_ids"]) for e in examples], budget)
    assert len(ranges) > 1
    expected = [trl(examples)] + [trl(examples[a:b]) for a, b in ranges]
    for ours, theirs in zip([batch] + batch[FORWARD_CHUNKS], expected, strict=True):
        assert set(ours) - {FORWARD_CHUNKS} == set(theirs)
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
            else:
                assert ours[key] == value and type(ours[key]) is type(value), key


def test_deferred_metrics_log_what_trl_logs(tiny_model_dir, tmp_path, monkeypatch):
    """Metrics kept on the device and read at logging steps (what fast paths do) log TRL's values: the same
    loss, entropy, token accuracy and tokens seen at every logging step, with 3 micro-batches per step."""
    from trl import SFTTrainer

    trl_forwards = []
    trl_compute_loss = SFTTrainer.compute_loss
    monkeypatch.setattr(SFTTrainer, "compute_loss", lambda self, *a, **k: trl_forwards.append(1) or
                        trl_compute_loss(self, *a, **k))
    data = spread_conversations(40)
    logs = {}
    for deferred in (False, True):
        trl_forwards.clear()
        *_, trainer = run_recipe(tiny_model_dir, tmp_path / str(deferred), data, padding_free=True,
                                 deferred_metrics=deferred)
        assert trainer.deferred_metrics is deferred and len(trl_forwards) == (0 if deferred else 9)
        logs[deferred] = [{k: r[k] for k in ("loss", "entropy", "mean_token_accuracy", "num_tokens")}
                          for r in trainer.state.log_history if "loss" in r]
    assert len(logs[True]) == 3 and logs[True][-1]["num_tokens"] > logs[True][0]["num_tokens"] > 0
    for trl_row, deferred_row in zip(logs[False], logs[True]):
        assert deferred_row == pytest.approx(trl_row, rel=1e-5)


def test_padding_free_rows_skip_mask_building(monkeypatch):
    """Fast paths hand the decoder no mask for padding-free rows: the same logits, and transformers never reads
    the position ids back to detect packing (a host wait at every forward on a GPU)."""
    import transformers.masking_utils as masking
    from peft import LoraConfig, get_peft_model

    from medqwen.kernels.packed_attention import skip_mask_building

    register_attention()
    model = random_qwen3("tiny", vocab_size=300, seed=1)
    model.set_attn_implementation(VARLEN)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=TARGETS))
    cu = torch.tensor([0, 10, 30], dtype=torch.int32)
    positions = torch.cat([torch.arange(10), torch.arange(20)])[None]  # two conversations in one row
    batch = dict(input_ids=torch.randint(0, 300, (1, 30)), position_ids=positions, cu_seq_lens_q=cu,
                 cu_seq_lens_k=cu, max_length_q=20, max_length_k=20, use_cache=False)  # training: no cache
    packing_checks = []
    find = masking.find_packed_sequence_indices
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda ids: packing_checks.append(1) or find(ids))
    built = model(**batch).logits
    assert packing_checks == [1]
    assert skip_mask_building(model)
    skipped = model(**batch).logits
    assert packing_checks == [1]  # not called again
    torch.testing.assert_close(skipped, built, rtol=0, atol=0)
    padded = model(input_ids=batch["input_ids"], attention_mask=torch.ones(1, 30, dtype=torch.long),
                   use_cache=False).logits
    assert not torch.equal(padded, built)  # a real mask still reaches the model (here: one sequence, no packing)
