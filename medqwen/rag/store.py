"""The Chroma store: open it (local folder or `chroma run` server), and index files into it idempotently.

    client = open_client(cfg)                         # PersistentClient(persist_dir) or HttpClient(host, port)
    collection = open_collection(client, cfg, create=True)
    stats = index_paths(collection, cfg.input, cfg)   # second run adds nothing; changed files replaced

Chunk ids are content hashes, so an unchanged chunk keeps its id (and its embedding) across runs; a file whose
bytes and chunk settings are unchanged, and whose chunks are all in the store, is skipped without parsing it (an
interrupted run resumes where it stopped); chunks of a deleted file are pruned, and with prune_unlisted the
chunks of every file not under the inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from medqwen.configlib import UserError
from medqwen.rag.config import RagConfig
from medqwen.rag.documents import SUPPORTED_SUFFIXES, Chunk, DocumentError, file_chunks
from medqwen.rag.embeddings import MedqwenEmbedding, vector_space


class StoreError(UserError, RuntimeError):
    """The store is missing, empty, unreachable or was built differently; the message says what to do."""


@contextlib.contextmanager
def index_lock(cfg: RagConfig, timeout_s: float = 3600.0):
    """Hold an exclusive lock on a local store while indexing: two indexers on one folder would each write the
    HNSW index from their own memory, and the last writer would drop the other's vectors. The second waits, then
    finds the files already indexed. (A `chroma run` server serialises writes itself: no lock.)"""
    if cfg.chroma_host:
        yield
        return
    import fcntl

    folder = Path(cfg.persist_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".medqwen-index.lock", "w") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"another indexer has held {folder} for {timeout_s:g} s; is one still running?")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stored_embedding_config(collection) -> dict | None:
    """The embedding config Chroma saved with the collection (None for a collection made without ours)."""
    stored = (collection.configuration or {}).get("embedding_function")
    return stored.get_config() if stored is not None and hasattr(stored, "get_config") else None


def make_embedding(cfg: RagConfig, collection=None) -> MedqwenEmbedding:
    """The embedding function the config asks for; for an existing collection, at the precision it was built with
    unless the config names one (documents and queries then go through the same weights)."""
    precision = cfg.embedding_precision
    if collection is not None and precision == "auto":
        precision = (stored_embedding_config(collection) or {}).get("precision") or "auto"
    return MedqwenEmbedding(cfg.embedding_backend, cfg.embedding_model, cfg.query_prefix, cfg.document_prefix,
                            cfg.embedding_batch_size, cfg.embedding_device, precision)


def open_client(cfg: RagConfig, create: bool = False):
    """A Chroma client: HttpClient when cfg.chroma_host is set, else PersistentClient(cfg.persist_dir)."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if cfg.chroma_host:
        try:
            client = chromadb.HttpClient(host=cfg.chroma_host, port=cfg.chroma_port, settings=settings)
            client.heartbeat()
        except Exception as err:  # chromadb raises plain Exception/ValueError for connection failures
            raise StoreError(f"cannot reach the Chroma server at {cfg.chroma_host}:{cfg.chroma_port} ({err}). "
                             f"Start it with `chroma run --path out/rag/chroma --port {cfg.chroma_port}`.") from None
        return client
    path = Path(cfg.persist_dir)
    if not create and not path.is_dir():
        raise StoreError(f"no knowledge store at {path}: build it first with `python agent/embedding.py "
                         f"--input <files or folders> --persist_dir {path}`")
    return chromadb.PersistentClient(path=str(path), settings=settings)


def open_collection(client, cfg: RagConfig, create: bool = False):
    """Open (or create) the collection with our embedding function; refuse one built with another model."""
    from chromadb.errors import NotFoundError

    try:
        existing = client.get_collection(cfg.collection)  # Chroma rebuilds its embedding function from the config
    except (NotFoundError, ValueError) as err:
        if "does not exist" not in str(err) and not isinstance(err, NotFoundError):
            raise
        if not create:
            raise StoreError(f"collection {cfg.collection!r} not found in the store: build it with "
                             f"`python agent/embedding.py --collection {cfg.collection}`") from None
        existing = None
    embedding = make_embedding(cfg, existing)
    if existing is None:
        collection = client.get_or_create_collection(
            cfg.collection, embedding_function=embedding,
            configuration={"hnsw": {"space": "cosine", "ef_search": cfg.hnsw_ef_search}},
            metadata={"chunk_size": cfg.chunk_size, "chunk_overlap": cfg.chunk_overlap})
    else:
        collection = client.get_collection(cfg.collection, embedding_function=embedding)
    hnsw = (collection.configuration or {}).get("hnsw") or {}
    if hnsw.get("ef_search") not in (None, cfg.hnsw_ef_search):  # a search-time setting: safe to change
        collection.modify(configuration={"hnsw": {"ef_search": cfg.hnsw_ef_search}})
    old, new = stored_embedding_config(collection), embedding.get_config()
    if old is not None and vector_space(old) != vector_space(new):  # the bundled model: any engine or precision
        raise StoreError(f"collection {cfg.collection!r} was embedded with {old.get('model')} "
                         f"({old.get('precision') or 'fp32'}) but the config asks for {new['model']} "
                         f"({new['precision']}): use the same model or another --collection")
    return collection


@dataclass
class IndexStats:
    files: int = 0  # files seen
    unchanged: int = 0  # skipped: same bytes as last time
    indexed: int = 0  # new or changed files (re)chunked
    failed: int = 0
    skipped_lines: int = 0  # bad JSONL lines skipped (each named in errors); the rest of their file is indexed
    pruned_files: int = 0
    chunks_added: int = 0
    chunks_deleted: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    chunks_per_s: float = 0.0  # chunks added per second of the whole run
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def iter_files(paths: list[str]) -> list[tuple[Path, Path]]:
    """(file, root) for every supported file under the given files/folders, sorted; missing paths raise.

    A symlink inside a folder is followed only when its target stays inside that folder: a link to
    ~/.ssh or /etc in a shared corpus folder must not put those files into the store (and the prompt).
    """
    found = []
    for raw in paths:
        root = Path(raw).expanduser().resolve()
        if root.is_file():
            found.append((root, root))
        elif root.is_dir():
            found += [(p, root) for p in sorted(root.rglob("*"))
                      if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(root).parts)
                      and p.resolve().is_relative_to(root)]
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return found


def fingerprint(data: bytes, cfg: RagConfig) -> str:
    """What a file's chunks depend on: its bytes and the chunking settings."""
    settings = f"{cfg.chunk_size}|{cfg.chunk_overlap}|{cfg.encoding}".encode()
    return hashlib.sha256(data + b"\0" + settings).hexdigest()


def _existing(collection, batch: int = 5000) -> dict[str, dict[str, tuple[str, int]]]:
    """source path -> {chunk id: (file fingerprint, chunks in file)} for the whole collection (paged)."""
    by_source: dict[str, dict[str, tuple[str, int]]] = {}
    offset = 0
    while True:
        page = collection.get(include=["metadatas"], limit=batch, offset=offset)
        for cid, meta in zip(page["ids"], page["metadatas"]):
            by_source.setdefault(meta.get("source", ""), {})[cid] = (meta.get("file_fingerprint", ""),
                                                                      meta.get("file_chunks", -1))
        if len(page["ids"]) < batch:
            return by_source
        offset += batch


def _delete(collection, ids: list[str], batch: int) -> None:
    for i in range(0, len(ids), batch):
        collection.delete(ids=ids[i:i + batch])


def index_paths(collection, paths: list[str], cfg: RagConfig, progress: bool = True) -> IndexStats:
    """Index files/folders into the collection idempotently; a bad file is reported and the rest indexed."""
    start = time.perf_counter()
    stats = IndexStats()
    files = iter_files(paths)
    stats.files = len(files)
    existing = _existing(collection)
    max_batch = max(1, min(cfg.embedding_batch_size, 5000))

    to_add: list[Chunk] = []
    to_delete: list[str] = []
    for path, _root in tqdm(files, desc="reading", unit="file", disable=not progress or len(files) < 2):
        source = str(path)
        sha = fingerprint(path.read_bytes(), cfg)
        old = existing.get(source, {})
        if old and set(old.values()) == {(sha, len(old))}:  # same bytes and settings, and completely indexed
            stats.unchanged += 1
            continue
        skipped: list[str] = []
        try:
            chunks = file_chunks(path, source, cfg.chunk_size, cfg.chunk_overlap, cfg.encoding, skipped)
            stats.skipped_lines += len(skipped)
            stats.errors += [f"{line} (line skipped, the rest of the file indexed)" for line in skipped]
        except (DocumentError, OSError) as err:
            stats.failed += 1
            stats.errors.append(str(err))
            continue  # its old chunks (if any) stay: nothing is lost because of a bad edit
        stats.indexed += 1
        for chunk in chunks:
            chunk.metadata.update(file_fingerprint=sha, file_chunks=len(chunks))
        new_ids = {c.id for c in chunks}
        to_add += [c for c in chunks if c.id not in old]
        to_delete += [cid for cid in old if cid not in new_ids]
        kept = [c for c in chunks if c.id in old]
        if kept:  # same text, new file version: refresh the fingerprint, keep the embedding
            for i in range(0, len(kept), max_batch):
                part = kept[i:i + max_batch]
                collection.update(ids=[c.id for c in part], metadatas=[c.metadata for c in part])

    if cfg.prune or cfg.prune_unlisted:  # files gone from an indexed folder; with prune_unlisted, any other file
        seen = {str(p) for p, _ in files}
        roots = {str(root) for _, root in files} | {str(Path(p).expanduser().resolve()) for p in paths}
        for source, ids in existing.items():
            under_an_input = any(source.startswith(r.rstrip("/") + "/") for r in roots)
            if source not in seen and (cfg.prune_unlisted or under_an_input):
                stats.pruned_files += 1
                to_delete += list(ids)

    bar = tqdm(total=len(to_add), desc="embedding", unit="chunk", disable=not progress or not to_add)
    for i in range(0, len(to_add), max_batch):
        part = to_add[i:i + max_batch]
        documents = [c.document for c in part]
        # No embeddings passed: Chroma calls the collection's MedqwenEmbedding on the documents.
        collection.add(ids=[c.id for c in part], documents=documents, metadatas=[c.metadata for c in part])
        bar.update(len(part))
    bar.close()
    _delete(collection, to_delete, 5000)  # after the adds: a crash in between leaves old chunks, not none

    stats.chunks_added, stats.chunks_deleted = len(to_add), len(to_delete)
    stats.chunks_total = collection.count()
    stats.seconds = round(time.perf_counter() - start, 3)
    stats.chunks_per_s = round(stats.chunks_added / stats.seconds, 2) if stats.seconds else 0.0
    return stats
