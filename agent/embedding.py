"""Build (or update) the knowledge store: files/folders -> chunks -> embeddings -> a Chroma collection.

    python agent/embedding.py                                     # data/rag_sample -> out/rag/chroma
    python agent/embedding.py --input raw/tcm_books --chunk_size 200        # your own folder of books
    python agent/embedding.py --embedding_model BAAI/bge-small-zh-v1.5 --collection bge_small   # any ST model
    python agent/embedding.py --embedding_precision fp32 --collection e5_fp32     # the bundled model in float32
    python agent/embedding.py --chroma_host localhost --chroma_port 8000   # a `chroma run` server

Running it again adds nothing; a changed file has its chunks replaced, a deleted file's chunks are pruned.
A file that cannot be read is reported (exit status 1) and the others are still indexed.
"""

import json
import sys
from pathlib import Path

from medqwen.cli import run_script
from medqwen.configlib import save_config
from medqwen.rag import index_paths, open_client, open_collection
from medqwen.rag.config import RagConfig
from medqwen.rag.documents import SUPPORTED_SUFFIXES
from medqwen.rag.store import index_lock, iter_files
from medqwen.reporting import markdown_table


def main(cfg: RagConfig) -> int:
    out_dir = Path(cfg.persist_dir) if not cfg.chroma_host else Path("out/rag")
    if not iter_files(cfg.input):  # before the store is created: a typo must not leave an empty database
        raise FileNotFoundError(f"no indexable files ({' '.join(SUPPORTED_SUFFIXES)}) under {cfg.input}")
    save_config(cfg, out_dir / "index_config.yaml")
    with index_lock(cfg):  # a second indexer on the same folder waits, then finds the work done
        collection = open_collection(open_client(cfg, create=True), cfg, create=True)
        stats = index_paths(collection, cfg.input, cfg)
    (out_dir / "index_stats.json").write_text(json.dumps(stats.as_dict(), ensure_ascii=False, indent=2))
    rows = [[k, v] for k, v in stats.as_dict().items() if k != "errors"]
    print(markdown_table(rows, ["index", "value"]))
    for error in stats.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if stats.errors else 0


if __name__ == "__main__":
    run_script(RagConfig, main)
