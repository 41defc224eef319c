"""How often the semantic cache answers, and how often wrongly, by threshold and stage.

    python -m services.cache.evaluate [--data DIR] [--eval FILE:FORMAT ...] [--no-default-sets]

Each labelled pair is one cache situation: the cache holds an answer to text A and
is asked text B. A paraphrase pair should hit (its share is the hit rate); any
other pair must miss (its share is the false-hit rate), reported overall and on
lexically close non-paraphrases (word overlap ≥ 0.5). For each stage, plain cosine
(as other gateways do it), cosine after the rules, and rules plus the learned model,
the table runs over a range of thresholds; `*` marks the shipped default.

Sets: MRPC dev (held out from calibration), the question and instruction pairs in
bench/cache/questions.jsonl (written for this project: how a threshold tuned on
news and captions carries over to what a cache sees), and any evaluation files
given with --eval (formats: stsb, mrpc, qqp, jsonl), e.g. STS-B test or Quora
Question Pairs. The training pairs are shown too, marked: figures on them are
optimistic for the model stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from services.cache.calibrate import Scored, embed, rates, score
from services.cache.pairs import Pair, PairsMissing, data_dir, dev_pairs, load_file, training_pairs
from services.cache.verifier import WEIGHTS, Model

QUESTIONS = Path(__file__).resolve().parents[2] / "bench" / "cache" / "questions.jsonl"
COSINES = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)
PROBABILITIES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def table(name: str, s: Scored, model: Model, weights: dict[str, float]) -> list[str]:
    n_close = int(s.close.sum())
    out = [
        f"\n{name}: {len(s.pairs)} pairs, {int(s.same.sum())} paraphrases, "
        f"{int((~s.same).sum())} non-paraphrases ({n_close} lexically close)",
        f"  {'stage':<15} {'threshold':>9}  {'hit rate':>8}  {'false hits':>10}  {'close false':>11}",
    ]

    def row(stage: str, t: float, accept: np.ndarray, default: bool) -> None:
        hit, false, close = rates(accept, s)
        mark = "*" if default else " "
        close_text = f"{close:10.2%}" if n_close else "       n/a"
        out.append(f"{mark} {stage:<15} {t:9.4f}  {hit:8.1%}  {false:10.2%}  {close_text}")

    cos_default, rules_default = weights["cosine_threshold"], weights["rules_cosine_threshold"]
    for t in sorted({*COSINES, round(cos_default, 4)}):
        row("cosine", t, s.cosine >= t, abs(t - cos_default) < 1e-4)
    for t in sorted({*COSINES, round(rules_default, 4)}):
        row("rules+cosine", t, s.rules_ok & (s.cosine >= t), abs(t - rules_default) < 1e-4)
    probability = model.probability(s.rows)
    gate = s.rules_ok & (s.cosine >= model.floor)
    for t in sorted({*PROBABILITIES, round(model.threshold, 4)}):
        row("rules+model", t, gate & (probability >= t), abs(t - model.threshold) < 1e-4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.cache.evaluate", description=__doc__)
    parser.add_argument("--data", help="folder of the labelled pairs (default: see services/cache/pairs.py)")
    parser.add_argument(
        "--eval", action="append", default=[], metavar="FILE:FORMAT", help="extra evaluation set"
    )
    parser.add_argument("--embeddings", type=Path, help="an .npz file keeping embeddings between runs")
    parser.add_argument("--no-default-sets", action="store_true", help="only the --eval sets")
    args = parser.parse_args(argv)
    sets: list[tuple[str, list[Pair]]] = []
    if not args.no_default_sets:
        try:
            root = data_dir(args.data)
            sets.append(("MRPC dev (held out)", dev_pairs(root)))
            sets.append(("training pairs (STS-B train + MRPC train; seen in training)", training_pairs(root)))
        except PairsMissing as exc:
            print(f"note: {exc}", file=sys.stderr)
        sets.insert(
            0,
            (
                "question and instruction pairs (bench/cache/questions.jsonl)",
                load_file(QUESTIONS, "jsonl", "questions"),
            ),
        )
    for spec in args.eval:
        path, _, fmt = spec.rpartition(":")
        if fmt not in ("stsb", "mrpc", "qqp", "jsonl") or not Path(path).is_file():
            print(
                f"--eval {spec}: expected an existing FILE:FORMAT (stsb, mrpc, qqp, jsonl)", file=sys.stderr
            )
            return 2
        sets.append((Path(path).name, load_file(Path(path), fmt, Path(path).name)))
    weights = json.loads(WEIGHTS.read_text(encoding="utf-8"))
    model = Model.from_json(weights)
    vectors = embed([t for _, pairs in sets for p in pairs for t in (p.a, p.b)], args.embeddings)
    for name, pairs in sets:
        if pairs:
            print("\n".join(table(name, score(pairs, vectors), model, weights)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
