"""GraphSampler samples what transformers' generate samples: same seed, same tokens, same stopping and padding."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from medqwen.kernels.decode import STOP_CHECK_EVERY, GraphSampler


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    return ids, torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")


PROMPTS = [[11, 12, 13, 14, 15, 16, 17], [21, 22, 23], [31, 32, 33, 34, 35], [41]]


@pytest.mark.parametrize("settings", [
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0},       # TRL's GRPO defaults: no processor at all
    {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "min_p": 0.01},
])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_samples_what_generate_samples(tiny, settings, attention):
    tiny.set_attn_implementation(attention)
    pad = tiny.config.pad_token_id
    ids, mask = left_padded(PROMPTS, pad)
    config = GenerationConfig(do_sample=True, max_new_tokens=20, pad_token_id=pad,
                              eos_token_id=tiny.config.eos_token_id, **settings)
    sampler = GraphSampler(tiny)
    assert sampler.unsupported(config) is None
    # the second call reuses the first one's buffers; the third, with shorter prompts, pads them to its width
    for seed, rows in ((0, PROMPTS), (1, PROMPTS), (2, [p[:3] for p in PROMPTS])):
        ids, mask = left_padded(rows, pad)
        torch.manual_seed(seed)
        expected = tiny.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        torch.manual_seed(seed)
        assert torch.equal(sampler.generate(ids, mask, config), expected)
    assert sampler._state.prompt_len == len(PROMPTS[0])
    tiny.set_attn_implementation("sdpa")


def test_rows_that_end_are_padded_and_the_batch_stops_where_generate_stops(tiny):
    """An eighth of the vocabulary ends a row: rows stop at different steps, the batch before max_new_tokens and
    past the sampler's periodic stop check."""
    pad = tiny.config.pad_token_id
    ids, mask = left_padded(PROMPTS, pad)
    eos = list(range(0, tiny.config.vocab_size, 8))
    config = GenerationConfig(do_sample=True, max_new_tokens=60, pad_token_id=pad, eos_token_id=eos,
                              temperature=3.0)
    lengths = set()
    for seed in range(6):
        torch.manual_seed(seed)
        expected = tiny.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        torch.manual_seed(seed)
        got = GraphSampler(tiny).generate(ids, mask, config)
        assert torch.equal(got, expected)
        lengths.add(got.shape[1] - ids.shape[1])
        ended = torch.isin(got[:, ids.shape[1]:], torch.tensor(eos))
        assert ended.any(1).all()  # every row ended, and after its end come only pads
        first = ended.int().argmax(1)
        assert all((row[int(f) + 1:] == pad).all() for row, f in zip(got[:, ids.shape[1]:], first))
    assert len(lengths) > 1 and STOP_CHECK_EVERY < max(lengths) < 60, lengths


def test_refuses_what_it_cannot_graph(tiny):
    pad = tiny.config.pad_token_id
    sampler = GraphSampler(tiny)
    history = GenerationConfig(do_sample=True, max_new_tokens=4, pad_token_id=pad, eos_token_id=2,
                               repetition_penalty=1.3)
    assert "RepetitionPenaltyLogitsProcessor" in sampler.unsupported(history)
    greedy = GenerationConfig(do_sample=False, max_new_tokens=4, pad_token_id=pad, eos_token_id=2)
    assert "sampling" in sampler.unsupported(greedy)
    with pytest.raises(ValueError, match="RepetitionPenalty"):
        sampler.generate(*left_padded(PROMPTS, pad), history)
