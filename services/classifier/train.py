"""`make train-classifier`: fit the heads on the shipped data and write `heads.npz`.

The category head learns from the training side of the split only (`corpus.split`),
so `evaluate.py` and the tests can measure it on prompts it never saw. The difficulty
head learns from all 29 MMLU subjects; `evaluate.py` cross-validates the same recipe by
subject. Deterministic: the same data and backend give the same heads.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import get_args

from services.classifier import corpus
from services.classifier.heads import DEFAULT_HEADS
from services.classifier.rules import RuleClassifier
from services.classifier.training import (
    CATEGORY_C,
    DIFFICULTY_C,
    EmbeddingCache,
    build_heads,
    fit_category,
    fit_difficulty,
)
from services.kernel.encoder import Backend, classifier_backend


def default_cache() -> Path:
    return Path(os.environ.get("GATEWAY_DATA_DIR") or "data") / "classifier" / "embeddings.npz"


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the training and evaluation scripts that choose the encoder."""
    parser.add_argument("--cache", type=Path, default=default_cache(), help="embedding cache file")
    parser.add_argument(
        "--backend",
        choices=get_args(Backend),
        default="auto",
        help="the embedding backend (default: the classifier's, the int8 model once exported)",
    )
    parser.add_argument("--model-file", type=Path, help="the backend's ONNX file, if not make venv's")


def embedding_cache(args: argparse.Namespace) -> EmbeddingCache:
    """The embeddings of the encoder `add_encoder_arguments` chose, cached on disk."""
    return EmbeddingCache(args.cache, backend=classifier_backend(args.backend), model_file=args.model_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_HEADS)
    add_encoder_arguments(parser)
    args = parser.parse_args(argv)

    categories = RuleClassifier.load().categories
    cache = embedding_cache(args)
    examples = corpus.examples()
    train, held_out = corpus.split(examples)
    print(f"category examples: {len(train)} to train, {len(held_out)} held out", file=sys.stderr)
    category_fit = fit_category(
        cache.embed_prompts([e.text for e in train]), [e.category for e in train], categories
    )

    rows = corpus.outcomes()
    texts = [r.text for r in rows]
    print(f"difficulty rows: {len(rows)} from {len({r.subject for r in rows})} subjects", file=sys.stderr)
    difficulty_fit = fit_difficulty(cache.embed_prompts(texts), texts, rows)

    info = {
        "backend": cache.backend,
        "category_c": CATEGORY_C,
        "difficulty_c": DIFFICULTY_C,
        "category_train": dict(sorted(Counter(e.category for e in train).items())),
        "difficulty_rows": len(rows),
        "difficulty_target": "P(the cheap model fails)",
    }
    heads = build_heads(categories, category_fit, difficulty_fit, info)
    heads.save(args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
