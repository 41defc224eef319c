"""all-MiniLM-L6-v2 as an ONNX Runtime model: the encoder's fast backend.

`python -m services.kernel.encoder_onnx` (run by `make venv`) exports the packaged
weights once, with mean pooling and normalisation inside the graph. At run time only
`onnxruntime`, `tokenizers` and numpy are imported, not torch: the process is a third
of the size and starts in about a second.

The weights stay float32. Measured on one core of this project's machine (docs/
classifier.md): a short prompt takes ~4 ms against ~20 ms through sentence-transformers,
with the same vectors (cosine 1.0000). Two 8-bit variants were measured and rejected:
ONNX Runtime's dynamic int8 was ~2x faster but scales activations over the whole batch,
so a text's vector changed with its batch neighbours (cosine down to 0.98: a semantic
cache cannot have that); blockwise 8-bit weights (MatMulNBits) kept vectors stable but
were slower than float32 on this CPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MAX_TOKENS = 256  # the model's own limit (sentence-transformers' max_seq_length)
# A forward pass pads every text to the longest of its batch, and padding costs as much as
# text: a batch is split into runs of similar length (the longest at most RUN_SPREAD times
# the shortest plus RUN_SLACK tokens) of at most BATCH_TOKENS padded tokens. Measured: 32
# mixed prompts as one padded batch ran 4.5x slower than one by one; runs within 30 % + 4
# tokens ran 4 % slower than one by one, runs within 10 % + 1 token 4-5 % faster (CPU time
# per prompt on one core, 320 prompts in batches of 32, 2026-11-30).
RUN_SPREAD = 1.1
RUN_SLACK = 1
BATCH_TOKENS = 4096
FILE_NAME = "all-MiniLM-L6-v2.onnx"


def default_path() -> Path:
    """Where `make venv` puts the exported model: inside the virtualenv, beside the weights."""
    return Path(sys.prefix) / "share" / "llm-gateway" / FILE_NAME


class OnnxModel:
    """Tokeniser + ONNX Runtime session; `embed(texts)` gives unit float32 vectors."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from services.kernel.encoder import model_path

        self.tokenizer = Tokenizer.from_file(str(Path(model_path()) / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def embed(self, texts: list[str]) -> np.ndarray:
        tokens = [e.ids for e in self.tokenizer.encode_batch(texts)]
        order = sorted(range(len(texts)), key=lambda i: len(tokens[i]))
        out = np.empty((len(texts), 384), dtype=np.float32)
        start = 0
        while start < len(order):
            shortest = len(tokens[order[start]])
            end = start + 1
            while end < len(order):
                longest = len(tokens[order[end]])
                if longest > shortest * RUN_SPREAD + RUN_SLACK or longest * (end - start + 1) > BATCH_TOKENS:
                    break
                end += 1
            run = order[start:end]
            width = len(tokens[run[-1]])
            ids = np.zeros((len(run), width), dtype=np.int64)
            mask = np.zeros((len(run), width), dtype=np.int64)
            for row, i in enumerate(run):
                ids[row, : len(tokens[i])] = tokens[i]
                mask[row, : len(tokens[i])] = 1
            (vectors,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
            out[run] = vectors
            start = end
        return out


def export(target: Path, layers: int | None = None) -> Path:
    """Export the packaged model to `target` (needs torch and onnx: build time only);
    `layers`: only the first ones of the six, mean-pooled the same way."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    from services.kernel.encoder import model_path

    bert: Any = AutoModel.from_pretrained(model_path()).eval()
    if layers is not None:
        bert.encoder.layer = bert.encoder.layer[:layers]

    class Pooled(torch.nn.Module):
        """The transformer plus sentence-transformers' mean pooling and normalisation."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / "model.onnx"
        sample = torch.ones(2, 8, dtype=torch.long)
        torch.onnx.export(
            Pooled(),
            (sample, sample),
            str(partial),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
        shutil.move(partial, target.with_suffix(".partial"))
    target.with_suffix(".partial").replace(target)  # atomic: a half-written file is never the model
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export all-MiniLM-L6-v2 to an ONNX model.")
    parser.add_argument("--output", type=Path, default=default_path())
    args = parser.parse_args(argv)
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    path = export(args.output)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
