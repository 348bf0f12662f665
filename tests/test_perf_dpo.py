"""benchmark/perf_dpo.py's pairs and FLOPs: real lengths split as the histogram says, DPO = train + reference."""

from medqwen.modeling import QWEN3_SHAPES
from medqwen.perf.data import histogram_lengths, load_length_histogram
from medqwen.perf.dpo import benchmark_pairs, dpo_step_flops
from medqwen.perf.flops import forward_flops, lora_train_flops


def test_pairs_follow_the_real_length_histogram():
    histogram = load_length_histogram()
    pairs = benchmark_pairs(50, 1024, vocab_limit=1000, seed=3)
    totals = histogram_lengths(100, histogram, 1024, seed=3)  # the oracle: the same draws
    assert [len(p["prompt_ids"]) + len(p["chosen_ids"]) for p in pairs] == totals[0::2]
    share = 1 - histogram["assistant_fraction"]
    assert all(len(p["prompt_ids"]) == max(1, round(t * share)) for p, t in zip(pairs, totals[0::2]))
    assert all(len(p["prompt_ids"]) + len(p["rejected_ids"]) <= 1024 for p in pairs)
    assert max(i for p in pairs for k in p for i in p[k]) < 1000


def test_dpo_step_flops_add_a_reference_forward():
    from types import SimpleNamespace

    config = SimpleNamespace(**QWEN3_SHAPES["qwen3-4b"])
    lengths, targets = [300, 700, 1024], ["q_proj", "v_proj"]
    train = lora_train_flops(config, lengths, 8, targets)
    assert dpo_step_flops(config, lengths, 8, targets) == train + forward_flops(config, lengths)
    assert dpo_step_flops(config, lengths, 8, targets, reference=False) == train
