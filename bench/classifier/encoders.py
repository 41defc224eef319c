"""The encoder backends side by side: `python -m bench.classifier.encoders`.

For each backend (`--backends`, default the int8 and the float ONNX models), on one
pinned core and one thread, taking turns prompt by prompt so the machine's load falls on
all alike, in CPU time of the forward pass (tokeniser included):

- a 12-token prompt alone; prompts of 28-36 tokens alone (the median length of the
  classifier's prompts of up to 200 characters is ~32 tokens), p50 and p99;
- 32 of those prompts in one call (ms per prompt); a 256-token text alone;
- agreement: cosine to the vectors of the float model it computes (for `onnx-int8`, the
  float first layers it quantises, through sentence-transformers; else the float ONNX
  model) over 300 held-out prompts (min and mean), and each text's vector alone against
  the same text in a batch with the others (min): 1.0 means the vector does not depend
  on its batch.

Nothing here is a test: the figures go to docs/classifier.md.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.classifier import corpus
from services.classifier.prompt import of_text
from services.kernel import encoder_int8
from services.kernel.encoder import load_backend


def cpu_ms(model: Any, texts: list[str]) -> float:
    started = time.thread_time()
    model.embed(texts)
    return (time.thread_time() - started) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="onnx,onnx-int8", help="comma-separated; torch too if wanted")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--int8-file", type=Path, help="another build of onnx-int8 (encoder_int8 --output)")
    parser.add_argument("--layers", type=int, default=encoder_int8.LAYERS, help="of that build")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    models = {
        name: load_backend(name, args.int8_file if name == "onnx-int8" else None, threads=1)[1]
        for name in args.backends.split(",")
    }
    _, reference = load_backend("onnx", threads=1)
    _, held_out = corpus.split(corpus.examples())
    texts = [of_text(e.text).text for e in random.Random(0).sample(held_out, 300)]
    lengths = [len(reference.tokenizer.encode(t).ids) for t in texts]
    medium = [t for t, n in zip(texts, lengths, strict=True) if 28 <= n <= 36][:32]
    short = "How do I reset my password?"
    long = " ".join(texts)  # truncated to the model's 256 word pieces
    times: dict[str, dict[str, list[float]]] = {
        name: {"12": [], "32": [], "batch": [], "256": []} for name in models
    }
    for model in models.values():
        model.embed([short, *medium[:4]])  # warm up
    for r in range(args.rounds):
        order = list(models.items()) if r % 2 == 0 else list(models.items())[::-1]
        for name, model in order:
            times[name]["12"].append(cpu_ms(model, [short]))
            times[name]["32"] += [cpu_ms(model, [t]) for t in medium[:8]]
            if r % 5 == 0:
                times[name]["batch"].append(cpu_ms(model, medium) / len(medium))
                times[name]["256"].append(cpu_ms(model, [long]))
    floats = {}
    if "onnx-int8" in models:
        floats["onnx-int8"] = encoder_int8.float_reference(args.layers).embed(texts)
    print(f"{len(medium)} prompts of 28-36 tokens; {len(texts)} held-out prompts for the cosines")
    for name, model in models.items():
        t = times[name]
        together = model.embed(texts)
        alone = np.vstack([model.embed([text]) for text in texts[:100]])
        cosine = (together * floats.get(name, reference.embed(texts))).sum(axis=1)
        stable = (alone * together[:100]).sum(axis=1).min()
        print(
            f"{name:>10}: 12 tokens {np.median(t['12']):.2f} ms; "
            f"28-36 tokens p50 {np.median(t['32']):.2f} ms, p99 {np.percentile(t['32'], 99):.2f} ms; "
            f"32 in one call {np.median(t['batch']):.2f} ms each; 256 tokens {np.median(t['256']):.1f} ms; "
            f"cosine to its float model min {cosine.min():.4f}, mean {cosine.mean():.4f}; "
            f"alone vs in a batch min {stable:.5f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
