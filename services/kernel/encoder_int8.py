"""The classifier's encoder: the first 4 layers of all-MiniLM-L6-v2, static int8.

`python -m services.kernel.encoder_int8` (run by `make venv`) exports the first `LAYERS`
of the packaged model's six layers to ONNX (mean-pooled and normalised like the whole
model), then quantises it with ONNX Runtime's static QDQ quantisation:

- the weight matrices (query, key, value, attention output, the two feed-forward
  products) to int8, one scale per output channel;
- their inputs to uint8 with scales fixed at build time from the activations of 400
  training prompts of the classifier (min-max calibration, a seeded sample);
- their outputs, and everything else (embeddings, attention scores, layer norms, GELU,
  pooling), stay float32. Quantising the outputs too (per-tensor uint8) lost most of
  the accuracy for no speed.

Every scale is a constant of the file, so a text's vector depends on that text only,
never on the texts batched with it (ONNX Runtime's dynamic int8, which computes scales
over the whole batch, does not have that property). At run time ONNX Runtime fuses each
quantised product into `MatMulIntegerToFloat` (u8 x s8; MLAS uses AVX-512 VNNI where
the CPU has it).
On one core here, a ~32-token prompt takes ~3 ms against ~9.5 ms for the float model
(int8 halves it, four layers of six take another third off); the classifier's heads,
retrained on these vectors, classify as well as on the float six-layer ones or better
(figures in docs/classifier.md).

Only the classifier uses it, with heads trained on its vectors (`make train-classifier`).
The semantic cache keeps the float model: its similarity threshold is calibrated on
float vectors, and a cached entry must be found again by the same text.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from services.kernel.encoder import TorchModel
from services.kernel.encoder_onnx import MAX_TOKENS
from services.kernel.encoder_onnx import default_path as float_path

# The first LAYERS of the model's six layers, mean-pooled like the whole model. Chosen on
# the classifier's evaluation (docs/classifier.md): 4 layers classified as well as 6 or
# better, at two thirds of the arithmetic.
LAYERS = 4
FILE_NAME = f"all-MiniLM-L6-v2.{LAYERS}-layers.int8.onnx"
CALIBRATION_PROMPTS = 400
SEED = 0


def default_path() -> Path:
    """Where `make venv` puts the quantised model: beside the float one."""
    return float_path().with_name(FILE_NAME)


def calibration_texts(count: int = CALIBRATION_PROMPTS, seed: int = SEED) -> list[str]:
    """Prompts from the training side of the classifier's corpus, as the classifier embeds
    them (the held-out side stays unseen by every step of the build)."""
    from services.classifier import corpus
    from services.classifier.prompt import of_text

    train, _ = corpus.split(corpus.examples())
    return [of_text(e.text).text for e in random.Random(seed).sample(train, min(count, len(train)))]


def quantize(source: Path, target: Path, texts: Sequence[str]) -> Path:
    """Write the static int8 model of the float model `source` to `target`, calibrated on
    `texts` (each run alone, unpadded). Build time only: takes about a minute."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )
    from tokenizers import Tokenizer

    from services.kernel.encoder import model_path

    tokenizer = Tokenizer.from_file(str(Path(model_path()) / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)

    class Prompts(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items: Iterator[str] = iter(texts)

        def get_next(self) -> dict[str, np.ndarray] | None:
            text = next(self.items, None)
            if text is None:
                return None
            ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
            return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    graph = onnx.load(str(source)).graph
    weights = {i.name for i in graph.initializer}
    # The products with a weight matrix; the two attention products (activations by
    # activations) are a small share of the time at these lengths and stay float.
    linear = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, partial = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(partial),
            Prompts(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=linear,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
        )
        staged = target.with_suffix(".partial")
        staged.write_bytes(partial.read_bytes())
    staged.replace(target)  # atomic: a half-written file is never the model
    return target


def build(target: Path, layers: int = LAYERS) -> Path:
    """Export the first `layers` layers in float32, then quantise them to `target`."""
    from services.kernel.encoder_onnx import export

    with tempfile.TemporaryDirectory() as tmp:
        source = export(Path(tmp) / "float.onnx", layers=layers)
        return quantize(source, target, calibration_texts())


def float_reference(layers: int = LAYERS, threads: int = 1) -> TorchModel:
    """The float model the int8 one approximates: sentence-transformers on the first
    `layers` layers (imports torch; for tests and benchmarks)."""
    return TorchModel(threads, layers=layers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the classifier's static int8 encoder.")
    parser.add_argument("--output", type=Path, help="default: beside the float model, named by --layers")
    parser.add_argument("--layers", type=int, default=LAYERS, choices=range(1, 7))
    args = parser.parse_args(argv)
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("root").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    output = args.output or float_path().with_name(FILE_NAME.replace(f".{LAYERS}-", f".{args.layers}-"))
    path = build(output, args.layers)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
