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
    assert sampler.unsupported(greedy) is None
    beams = GenerationConfig(do_sample=False, num_beams=2, max_new_tokens=4, pad_token_id=pad, eos_token_id=2)
    assert "one beam" in sampler.unsupported(beams)
    with pytest.raises(ValueError, match="RepetitionPenalty"):
        sampler.generate(*left_padded(PROMPTS, pad), history)


# ---------------------------------------------------------------------------------------------------------------
# DecodeEngine: what every stage that generates uses on a GPU; here its batching, stopping, windows and adapter
# merge run eagerly on the CPU against generate.

ENGINE_PROMPTS = [[11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [21, 22, 23], [31, 32, 33, 34, 35], [41],
                  [51, 52, 53, 54, 55, 56, 57, 58], [61, 62]]


def lively(tiny_model_dir):
    """The tiny model with weights of std 0.15: its greedy replies vary (at init's 0.02 it repeats one token), so
    that rows end at different steps."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    return model.eval()


def generate_alone(model, prompt: list[int], config) -> list[int]:
    """generate's greedy tokens for one unpadded prompt, cut after the first stop token."""
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)[0, len(prompt):]
    out = out.tolist()
    stops = set(config.eos_token_id)
    end = next((k for k, t in enumerate(out) if t in stops), None)
    return out if end is None else out[:end + 1]


def greedy_config(model, max_new_tokens: int = 40) -> GenerationConfig:
    # a sixth of the vocabulary ends a row, so rows stop at different steps (and some never)
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=model.config.pad_token_id,
                            eos_token_id=list(range(3, model.config.vocab_size, 6)))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the graph path runs on one only")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("with_adapter", [False, True])
def test_engine_greedy_tokens_equal_generate(tiny_model_dir, adapter_dir, with_adapter, device):
    """Prompts of six lengths in batches of at most 3 rows by a token budget, rows ending at different steps,
    attention windows of 8 slots, a short last batch padded: each prompt's tokens are generate's, unbatched; with
    an adapter, generate runs PEFT's unmerged layers and the engine the merged weights. On a GPU each step is a
    recorded CUDA graph (with a sixth of the vocabulary as stop tokens: torch.isin would sync there)."""
    from peft import PeftModel

    from medqwen.kernels.decode import DecodeEngine

    model = lively(tiny_model_dir).to(device)
    if with_adapter:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    config = greedy_config(model)
    expected = [generate_alone(model, p, config) for p in ENGINE_PROMPTS]
    engine = DecodeEngine(model, max_batch_tokens=3 * (11 + 40), max_rows=3, max_extra_pad=4, window_slots=8)
    assert engine.adapter == ("adapter merged into the weights" if with_adapter else "no adapter")
    assert engine.batches([len(p) for p in ENGINE_PROMPTS], 40) == [[0, 4, 2], [1, 5, 3]]
    got = engine.generate(ENGINE_PROMPTS, config)
    assert got == expected
    lengths = {len(t) for t in got}
    assert len(lengths) > 2 and 40 in lengths, lengths  # some stop early, at different steps; some never
    # a second call reuses the recorded state; five prompts leave a short last batch (padded with copies)
    assert engine.generate(ENGINE_PROMPTS[1:], config) == expected[1:]


def test_engine_batches_by_tokens_longest_first():
    from medqwen.kernels.decode import DecodeEngine

    engine = DecodeEngine.__new__(DecodeEngine)
    engine.max_batch_tokens, engine.max_rows, engine.max_extra_pad = 1000, 4, 50
    lengths = [100, 400, 120, 390, 90, 100, 330]
    plan = engine.batches(lengths, new_tokens=100)
    # 400-wide rows: 1000 // 500 = 2 per batch; 330 is more than 50 below the recorded 400: a new graph with rows
    # for its width (2), then one for 100 (1000 // 200 = 5, at most 4)
    assert plan == [[1, 3], [6, 2], [0, 5, 4]]
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))


class Collect:
    """A streamer that keeps what generate feeds it."""

    def __init__(self):
        self.pieces, self.ended = [], False

    def put(self, value):
        self.pieces.append(value.flatten().tolist())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("do_sample", [False, True])
def test_engine_streams_what_generate_streams(tiny_model_dir, do_sample):
    from medqwen.kernels.decode import DecodeEngine

    tiny = lively(tiny_model_dir)
    config = greedy_config(tiny, max_new_tokens=30)
    config.do_sample, config.temperature = do_sample, (2.0 if do_sample else None)
    prompt = ENGINE_PROMPTS[0]
    theirs, ours = Collect(), Collect()
    torch.manual_seed(3)
    tiny.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                  generation_config=config, streamer=theirs)
    torch.manual_seed(3)
    tokens = DecodeEngine(tiny, width_multiple=16).generate([prompt], config, streamer=ours)[0]
    # the first piece is the prompt (the engine passes it padded to 16 columns; streamers skip it)
    assert ours.pieces[1:] == theirs.pieces[1:] and len(ours.pieces[0]) == 16 and ours.ended and theirs.ended
    assert [t for piece in ours.pieces[1:] for t in piece] == tokens


def test_one_prompt_generator_keeps_generate_on_cpu(tiny_model_dir, capsys):
    from medqwen.kernels.decode import OnePromptGenerator

    tiny = lively(tiny_model_dir)
    config = greedy_config(tiny)
    cpu = OnePromptGenerator(tiny, "chat")
    assert cpu.engine is None and "chat: transformers generate on cpu" in capsys.readouterr().err
    forced = OnePromptGenerator(tiny, "chat", engine=True)
    assert "chat: decode engine on cpu" in capsys.readouterr().err
    for prompt in ENGINE_PROMPTS[:3]:
        assert forced.generate(prompt, config) == cpu.generate(prompt, config) == generate_alone(tiny, prompt, config)


def test_hf_backend_generates_the_same_text_on_the_engine(tiny_model_dir, capsys):
    from medqwen.chat import load_tokenizer
    from medqwen.exams.backends import HFBackend

    model = lively(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    prompts = ["<|im_start|>user\nhello there, how are you<|im_end|>\n<|im_start|>assistant\n", "a b c", "x"]
    plain = HFBackend(model, tokenizer, batch_size=2, decode_engine=False).generate(prompts, max_new_tokens=12)
    assert "transformers generate on cpu (decode_engine off)" in capsys.readouterr().err
    engine = HFBackend(model, tokenizer, decode_engine=True).generate(prompts, max_new_tokens=12)
    assert "generate: decode engine on cpu" in capsys.readouterr().err
    assert engine == plain
