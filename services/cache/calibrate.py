"""Train the verifier and choose the cache's default thresholds from measured precision.

    python -m services.cache.calibrate [--data DIR] [--write]

Learns from STS-B train and MRPC train (the rows `exclude.json` lists skipped; see
`pairs.py`), never from an evaluation set. Thresholds are chosen on out-of-fold
scores (5 folds: each pair is scored by a model that did not see it), as the lowest
threshold whose false-hit rate stays within the targets with a margin; MRPC dev,
held out entirely, then checks the choice. `--write` stores the weights and
thresholds in `services/cache/verifier.json`, which the cache loads.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.cache.pairs import Pair, PairsMissing, data_dir, dev_pairs, training_pairs
from services.cache.verifier import WEIGHTS, Model, features, parse, rule_conflict

TARGET_FALSE = 0.01  # false hits among non-paraphrases
TARGET_CLOSE = 0.03  # among lexically close non-paraphrases
MARGIN = 0.75  # choose within 75% of each target: the figures on unseen data vary
CLOSE_JACCARD = 0.5  # word-set overlap from which a non-paraphrase counts as lexically close
FLOORS = (0.5, 0.6, 0.7, 0.75, 0.8)


@dataclasses.dataclass
class Scored:
    """Pairs with what every stage needs, computed once."""

    pairs: list[Pair]
    cosine: np.ndarray
    rules_ok: np.ndarray  # no rule conflict
    rows: np.ndarray  # FEATURES per pair
    same: np.ndarray
    close: np.ndarray  # lexically close non-paraphrase


def word_jaccard(a: str, b: str) -> float:
    x, y = set(parse(a).words), set(parse(b).words)
    return len(x & y) / len(x | y) if x | y else 1.0


async def _encode(texts: list[str]) -> np.ndarray:
    from services.kernel.encoder import Encoder

    encoder = Encoder(max_batch=128)
    await encoder.start()
    try:
        await encoder.wait_ready()
        parts = [await encoder.encode(texts[i : i + 128]) for i in range(0, len(texts), 128)]
        return np.concatenate(parts) if parts else np.zeros((0, 384), dtype=np.float32)
    finally:
        await encoder.aclose()


def embed(texts: Sequence[str], cache: Path | None = None) -> dict[str, np.ndarray]:
    """Embeddings of `texts` by the cache's model; `cache` (an .npz file) keeps them
    between runs, since encoding some 16,000 sentences takes minutes on a small machine."""
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            known = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))
    missing = sorted(set(texts) - set(known))
    if missing:
        known.update(zip(missing, asyncio.run(_encode(missing)), strict=True))
        if cache is not None:
            names = list(known)
            np.savez(cache, texts=np.array(names), vectors=np.stack([known[n] for n in names]))
    return known


def score(pairs: list[Pair], vectors: dict[str, np.ndarray]) -> Scored:
    cosine = np.array([float(vectors[p.a] @ vectors[p.b]) for p in pairs])
    parsed = [(parse(p.a), parse(p.b)) for p in pairs]
    rules_ok = np.array([rule_conflict(a, b) is None for a, b in parsed])
    rows = np.array([features(a, b, c) for (a, b), c in zip(parsed, cosine, strict=True)])
    same = np.array([p.same for p in pairs])
    close = np.array([not p.same and word_jaccard(p.a, p.b) >= CLOSE_JACCARD for p in pairs])
    return Scored(pairs, cosine, rules_ok, rows, same, close)


def rates(accept: np.ndarray, s: Scored) -> tuple[float, float, float]:
    """(hit rate on paraphrases, false-hit rate on non-paraphrases, on lexically close ones)."""
    neg = ~s.same
    return (
        float(accept[s.same].mean()) if s.same.any() else 0.0,
        float(accept[neg].mean()) if neg.any() else 0.0,
        float(accept[s.close].mean()) if s.close.any() else 0.0,
    )


def lowest_safe(values: np.ndarray, gate: np.ndarray, s: Scored) -> float:
    """The lowest threshold on `values` (accepting where `gate` and value ≥ threshold) whose
    false-hit rates stay within the targets times the margin."""
    best = 1.0 + 1e-9
    for t in np.unique(np.round(values[gate], 4))[::-1]:
        _, false, close = rates(gate & (values >= t), s)
        if false > TARGET_FALSE * MARGIN or close > TARGET_CLOSE * MARGIN:
            break
        best = float(t)
    return best


def fit(rows: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    mean = rows.mean(axis=0)
    scale = rows.std(axis=0) + 1e-9
    model = LogisticRegression(C=1.0, max_iter=2000)
    model.fit((rows - mean) / scale, same)
    return mean, scale, model.coef_[0], float(model.intercept_[0])


def out_of_fold(s: Scored, gate: np.ndarray, folds: int = 5, seed: int = 7) -> np.ndarray:
    """Each gated pair's probability from a model trained on the other folds."""
    probability = np.zeros(len(s.pairs))
    order = np.random.default_rng(seed).permutation(len(s.pairs))
    fold_of = np.empty(len(s.pairs), dtype=int)
    fold_of[order] = np.arange(len(s.pairs)) % folds
    for k in range(folds):
        train = gate & (fold_of != k)
        test = gate & (fold_of == k)
        mean, scale, coef, intercept = fit(s.rows[train], s.same[train])
        model = Model(mean, scale, coef, intercept, 0.5, 0.0)
        probability[test] = model.probability(s.rows[test])
    return probability


def calibrate(train: Scored, dev: Scored | None) -> tuple[dict[str, object], list[str]]:
    report: list[str] = []

    def line(name: str, accept: np.ndarray, s: Scored) -> None:
        hit, false, close = rates(accept, s)
        report.append(f"  {name:<44} hit {hit:6.1%}   false {false:6.2%}   close {close:6.2%}")

    everything = np.ones(len(train.pairs), dtype=bool)
    cosine_t = lowest_safe(train.cosine, everything, train)
    rules_t = lowest_safe(train.cosine, train.rules_ok, train)
    best: tuple[float, float, float, np.ndarray] | None = None
    for floor in FLOORS:
        gate = train.rules_ok & (train.cosine >= floor)
        oof = out_of_fold(train, gate)
        t = lowest_safe(oof, gate, train)
        hit, _, _ = rates(gate & (oof >= t), train)
        report.append(f"  floor {floor:.2f}: out-of-fold threshold {t:.4f}, hit {hit:.1%}")
        if best is None or hit > rates(best[3], train)[0]:
            best = (floor, t, hit, gate & (oof >= t))
    assert best is not None
    floor, threshold, _, accepted = best
    gate = train.rules_ok & (train.cosine >= floor)
    mean, scale, coef, intercept = fit(train.rows[gate], train.same[gate])
    model = Model(mean, scale, coef, intercept, threshold, floor)
    report.append(
        f"training pairs: {len(train.pairs)} ({int(train.same.sum())} paraphrases, "
        f"{int(train.close.sum())} lexically close non-paraphrases)"
    )
    line(f"cosine ≥ {cosine_t:.4f}", train.cosine >= cosine_t, train)
    line(f"rules + cosine ≥ {rules_t:.4f}", train.rules_ok & (train.cosine >= rules_t), train)
    line(f"rules + model ≥ {threshold:.4f} (out of fold)", accepted, train)
    summary: dict[str, object] = {}
    if dev is not None and dev.pairs:
        report.append(f"MRPC dev (held out): {len(dev.pairs)} pairs")
        line(f"cosine ≥ {cosine_t:.4f}", dev.cosine >= cosine_t, dev)
        line(f"rules + cosine ≥ {rules_t:.4f}", dev.rules_ok & (dev.cosine >= rules_t), dev)
        dev_accept = dev.rules_ok & (dev.cosine >= floor) & (model.probability(dev.rows) >= threshold)
        line(f"rules + model ≥ {threshold:.4f}", dev_accept, dev)
        summary["mrpc_dev"] = dict(zip(("hit", "false", "close"), rates(dev_accept, dev), strict=True))
    summary["out_of_fold"] = dict(zip(("hit", "false", "close"), rates(accepted, train), strict=True))
    weights = model.to_json() | {
        "cosine_threshold": cosine_t,
        "rules_cosine_threshold": rules_t,
        "targets": {"false": TARGET_FALSE, "close": TARGET_CLOSE, "margin": MARGIN},
        "trained_on": ["stsb-train", "mrpc-train"],
        "measured": summary,
    }
    return weights, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.cache.calibrate", description=__doc__)
    parser.add_argument("--data", help="folder of the labelled pairs (default: see services/cache/pairs.py)")
    parser.add_argument("--write", action="store_true", help=f"write {WEIGHTS}")
    parser.add_argument("--embeddings", type=Path, help="an .npz file keeping embeddings between runs")
    args = parser.parse_args(argv)
    try:
        root = data_dir(args.data)
        train_pairs, held_out = training_pairs(root), dev_pairs(root)
    except PairsMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    vectors = embed([t for p in train_pairs + held_out for t in (p.a, p.b)], args.embeddings)
    weights, report = calibrate(score(train_pairs, vectors), score(held_out, vectors) if held_out else None)
    print("\n".join(report))
    if args.write:
        Path(WEIGHTS).write_text(json.dumps(weights, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {WEIGHTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
