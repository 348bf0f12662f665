"""Scale-out: a real `chroma run` server on localhost, indexed and queried through HttpClient
(RagConfig.chroma_host)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medqwen.rag import Retriever, StoreError, index_paths, open_client, open_collection
from medqwen.rag.config import RagConfig
from medqwen.serving import free_port

CHROMA = Path(sys.executable).parent / "chroma"


@pytest.fixture()
def chroma_server(tmp_path):
    """`chroma run` on a free port in 8200-8299, stopped (and its process group killed) at teardown."""
    if not CHROMA.is_file():
        pytest.fail(f"{CHROMA} not found: chromadb's CLI comes with `pip install chromadb`")
    port = free_port(8200, 8299)
    log = open(tmp_path / "chroma.log", "w")
    proc = subprocess.Popen([str(CHROMA), "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    cfg = RagConfig(chroma_host="127.0.0.1", chroma_port=port, collection="served")
    try:
        deadline = time.time() + 60
        while True:
            try:
                open_client(cfg)
                break
            except StoreError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("chroma run did not start:\n" + (tmp_path / "chroma.log").read_text()[-2000:])
                time.sleep(0.5)
        yield cfg
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


@pytest.mark.slow
def test_index_and_query_through_a_chroma_server(chroma_server, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# 桂枝汤\n治发热汗出恶风。\n# 麻黄汤\n治恶寒无汗而喘。\n", encoding="utf-8")
    cfg = chroma_server
    cfg.input = [str(docs)]
    collection = open_collection(open_client(cfg), cfg, create=True)
    assert index_paths(collection, cfg.input, cfg, progress=False).chunks_added == 2
    assert index_paths(collection, cfg.input, cfg, progress=False).chunks_added == 0  # idempotent there too

    again = open_collection(open_client(cfg), cfg)  # a new client sees the server's data
    hits = Retriever(again, cfg).search("无汗而喘", k=1)
    assert hits[0].source_id == "notes/麻黄汤"


def test_unreachable_server_gets_a_clear_message():
    cfg = RagConfig(chroma_host="127.0.0.1", chroma_port=free_port(8200, 8299))
    with pytest.raises(StoreError, match="cannot reach the Chroma server .*`chroma run"):
        open_client(cfg)
