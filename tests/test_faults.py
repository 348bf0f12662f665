"""Faults: processes killed with SIGKILL mid-work, two indexers on one store, servers dying mid-answer.

What must hold: nothing valid is lost, the store opens, the session goes on with a clear message.

    SIGKILL during prepare_data        test_sigkill_during_prepare_data_keeps_the_previous_output
    SIGKILL during indexing            test_sigkill_during_indexing_then_a_rerun_has_every_chunk_once
    SIGKILL during training            tests/test_train_lora.py::test_kill_after_checkpoint_then_resume_matches_
                                       uninterrupted_run (resumes from the last checkpoint, same adapter)
    two concurrent indexers            test_two_indexers_on_one_store
    model server dying mid-stream      test_model_server_killed_mid_stream_the_session_goes_on
    weather service dying mid-body     test_weather_service_killed_mid_body
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medqwen.rag.config import RagConfig

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")


def _wait_for(predicate, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# ----------------------------------------------------------------------------------------------------------
# prepare_data


def test_sigkill_during_prepare_data_keeps_the_previous_output(tmp_path):
    """Killed while the output's temporary file is being written (polled for, not guessed with a sleep): the
    previous output and its sidecars are untouched, and the next run removes the dead run's temporary file."""
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text("".join(json.dumps({"问": f"q{i}", "答": f"a{i}"}) + "\n" for i in range(10)))
    big.write_text("".join(json.dumps({"问": f"问题{i}" * 40, "答": f"回答{i}" * 40}, ensure_ascii=False) + "\n"
                           for i in range(150_000)), encoding="utf-8")
    out = tmp_path / "out" / "data.jsonl"
    script = [sys.executable, str(REPO / "data" / "prepare_data.py"), "--tokenizer", "none", "--output", str(out)]
    subprocess.run(script + ["--input", str(small)], env=ENV, check=True, capture_output=True, timeout=120)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}

    proc = subprocess.Popen(script + ["--input", str(big)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    temporary = out.parent / f"{out.name}.{proc.pid}.tmp"
    writing = _wait_for(lambda: temporary.exists() and temporary.stat().st_size > 0, 300, proc)
    _kill(proc)
    assert writing, "prepare_data ended before its output's temporary file appeared"
    assert temporary.exists(), "the kill came after the rename: the test did not hit the atomic write"
    after = {p.name: p.read_bytes() for p in out.parent.iterdir() if p != temporary}
    assert after == before  # the previous output and its config/stats are untouched, nothing half-written
    proc = subprocess.run(script + ["--input", str(small), "--no-shuffle"], env=ENV, capture_output=True, timeout=120)
    assert proc.returncode == 0 and len(out.read_text().splitlines()) == 10  # a re-run works
    assert not list(out.parent.glob("*.tmp"))  # and removes the killed run's temporary file


# ----------------------------------------------------------------------------------------------------------
# Indexing


def _corpus(folder: Path, files: int = 8, sections: int = 20) -> None:
    folder.mkdir(parents=True)
    for f in range(files):
        body = "".join(f"# 第{s}节\n第{f}卷第{s}节：黄芪补气固表，人参大补元气，"
                       "当归补血活血。\n" for s in range(sections))
        (folder / f"book{f:02d}.md").write_text(body, encoding="utf-8")


def _expected_ids(cfg: RagConfig) -> set[str]:
    from medqwen.rag.documents import file_chunks
    from medqwen.rag.store import iter_files

    return {c.id for path, _ in iter_files(cfg.input)
            for c in file_chunks(path, str(path), cfg.chunk_size, cfg.chunk_overlap, cfg.encoding)}


def _stored_ids(cfg: RagConfig) -> list[str]:
    from medqwen.rag import open_client, open_collection

    collection = open_collection(open_client(cfg), cfg)
    return collection.get(include=[])["ids"]


def _embedding_cmd(cfg: RagConfig) -> list[str]:
    return [sys.executable, str(REPO / "agent" / "embedding.py"), "--input", *cfg.input, "--persist_dir",
            cfg.persist_dir, "--collection", cfg.collection, "--embedding_batch_size", str(cfg.embedding_batch_size)]


def test_sigkill_during_indexing_then_a_rerun_has_every_chunk_once(tmp_path):
    _corpus(tmp_path / "docs")
    cfg = RagConfig(input=[str(tmp_path / "docs")], persist_dir=str(tmp_path / "chroma"), collection="faults",
                    embedding_batch_size=8)
    expected = _expected_ids(cfg)
    proc = subprocess.Popen(_embedding_cmd(cfg), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    sqlite = tmp_path / "chroma" / "chroma.sqlite3"
    # killed once the first batches are in (the sqlite file grows past its empty size) but before the end
    assert _wait_for(lambda: sqlite.is_file() and sqlite.stat().st_size > 200_000, 120, proc), \
        proc.stderr.read() if proc.poll() is not None else "no progress"
    time.sleep(0.3)
    assert proc.poll() is None, "indexing finished before it could be killed: make the corpus bigger"
    _kill(proc)
    partial = _stored_ids(cfg)  # the store opens after the kill
    assert len(partial) == len(set(partial)) and set(partial) <= expected
    proc = subprocess.run(_embedding_cmd(cfg), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = _stored_ids(cfg)
    assert sorted(final) == sorted(expected)  # every chunk exactly once: nothing lost, nothing duplicated


def test_two_indexers_on_one_store(tmp_path):
    _corpus(tmp_path / "docs", files=6, sections=10)
    cfg = RagConfig(input=[str(tmp_path / "docs")], persist_dir=str(tmp_path / "chroma"), collection="faults",
                    embedding_batch_size=16)
    procs = [subprocess.Popen(_embedding_cmd(cfg), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-1500:] for r in results]
    assert all("Traceback" not in err for _, err in results)
    assert sorted(_stored_ids(cfg)) == sorted(_expected_ids(cfg))
    from medqwen.rag import Retriever, open_client, open_collection

    hits = Retriever(open_collection(open_client(cfg), cfg), cfg).search("人参大补元气", 3)
    assert hits and "人参" in hits[0].document  # the HNSW index answers: no writer overwrote the other's vectors


# ----------------------------------------------------------------------------------------------------------
# Servers dying mid-answer


class _ServerProcess:
    def __init__(self, handler: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_servers", handler], cwd=REPO, env=ENV,
                                     stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            _kill(self.proc)


@pytest.fixture
def server_process():
    started = []

    def start(handler: str) -> _ServerProcess:
        started.append(_ServerProcess(handler))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def test_model_server_killed_mid_stream_the_session_goes_on(server_process, monkeypatch, capsys):
    import threading

    sys.path.insert(0, str(REPO / "agent"))
    import agent as agent_script
    from medqwen.agent.agent import build_agent
    from medqwen.agent.config import AgentConfig

    dying, healthy = server_process("FakeOpenAI"), server_process("FakeOpenAI")
    slow = AgentConfig(base_url=dying.url + "/v1", served_model="slow_stream", timeout_s=10)
    good = AgentConfig(base_url=healthy.url + "/v1", served_model="ok", timeout_s=10)
    agents = {"slow": build_agent(slow), "good": build_agent(good)}
    lines = iter(["讲一个长故事", "still there?", "exit"])

    def read(prompt):
        line = next(lines)
        if line == "讲一个长故事":
            threading.Timer(1.0, dying.kill).start()  # SIGKILL while the reply streams
        return line

    monkeypatch.setattr("builtins.input", read)
    real_ask = agent_script.ask
    monkeypatch.setattr(agent_script, "ask", lambda a, c, h, q, write: real_ask(
        agents["slow" if q == "讲一个长故事" else "good"], slow if q == "讲一个长故事" else good, h, q, write))
    start = time.perf_counter()
    agent_script.chat(None, good)
    out = capsys.readouterr().out
    assert "片段0" in out and "error: " in out and "VLLM_BASE_URL" in out  # a clear message, not a traceback
    assert "answer after 0 tool results" in out  # the next question is answered: the session went on
    assert time.perf_counter() - start < 15


def test_weather_service_killed_mid_body(server_process):
    from medqwen.agent.tools import get_weather

    server = server_process("HostileWeather")
    import threading

    threading.Timer(0.5, server.kill).start()  # "Trickle" sends one byte every 0.1 s
    start = time.perf_counter()
    out = get_weather("Trickle", api_key="k" * 20, base_url=server.url, timeout_s=8)
    assert out.startswith("Error: cannot reach the weather service") and time.perf_counter() - start < 3
    assert "k" * 20 not in out
