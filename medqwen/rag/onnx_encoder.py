"""An int8 ONNX export of a sentence-transformers model's encoder (bundled_e5.export_int8), run by onnxruntime in
place of the torch model inside the SentenceTransformer, which keeps its tokenizer, batching, pooling and
normalization: what sentence-transformers' backend="onnx" does through optimum-onnx (which pins transformers < 4.58).

    model = SentenceTransformer(folder, device="cpu")
    model[0].model = OnnxEncoder(Path(folder) / "onnx/model_qint8.onnx", model[0].model.config)
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput


class OnnxEncoder(torch.nn.Module):
    """input_ids, attention_mask -> last_hidden_state, on onnxruntime's CPU kernels."""

    def __init__(self, path: Path, config: Any):
        import onnxruntime as ort

        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as torch: OMP_NUM_THREADS, else the cores
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.config = config  # sentence-transformers reads the model's config (max positions, model type)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> BaseModelOutput:
        """One onnxruntime run per text, on its own tokens: no padding to compute, and each text's activations get
        their own int8 scale, so its vector no longer depends on the texts batched with it. Padded positions of
        the output are zero (pooling ignores them through the attention mask)."""
        ids, mask = input_ids.cpu().numpy(), attention_mask.cpu().numpy().astype(bool)
        hidden = np.zeros((*ids.shape, self.config.hidden_size), dtype=np.float32)
        for row in range(ids.shape[0]):
            feed = {"input_ids": ids[row, mask[row]][None], "attention_mask": np.ones((1, mask[row].sum()), ids.dtype)}
            out = self.session.run(["last_hidden_state"], {k: v for k, v in feed.items() if k in self.inputs})[0]
            hidden[row, mask[row]] = out[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))
