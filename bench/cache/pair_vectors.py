"""The two embeddings themselves as the verifier's second check: the experiment.

    PYTHONPATH=. python bench/cache/pair_vectors.py [--embeddings /tmp/pairs.npz] [--mlp]

Today's learned check reads the cosine of the two prompts' vectors and lexical features.
The classic sentence-pair classifier reads the vectors themselves: [|u-v|, u*v] (384 + 384
values from all-MiniLM-L6-v2, which the cache computes for both prompts anyway), here
together with the same lexical features, in logistic regression (and, with --mlp, a
one-hidden-layer network, pure numpy at inference). Two smaller readings of the vectors
are tried too: the L1 and L-infinity norms of u-v, and a threshold per entry from how
crowded its neighbourhood is (CSLS: 2 cos - r(a) - r(b), r the mean cosine of a text's
ten nearest other texts of the same set, as a cache would measure it in the namespace).

The protocol is calibrate.py's: STS-B train + MRPC train (exclude.json rows skipped), five
folds (each pair scored by a model that did not see it), for each cosine floor the rules
and the floor gate the pairs, the threshold is the lowest whose out-of-fold false-hit
rates stay within 75% of the targets, and the floor with the most out-of-fold hits wins.
The regularisation is chosen the same way (out-of-fold hits on the training pairs).
The final model, trained on all gated training pairs, is then scored on MRPC dev (held
out) and bench/cache/questions.jsonl (never trained on, never used to choose): hit /
false / close-false at the chosen floor and threshold, and each score's ROC AUC (over
all pairs, no rules or threshold). Then the per-candidate cost of each check on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.cache.calibrate import FLOORS, Scored, embed, lowest_safe, rates, score
from services.cache.evaluate import QUESTIONS
from services.cache.pairs import PairsMissing, data_dir, dev_pairs, load_file, training_pairs
from services.cache.verifier import WEIGHTS, Model, build, features, parse

FOLDS = 5
SEED = 7

Scorer = Callable[[np.ndarray], np.ndarray]
Fitter = Callable[[np.ndarray, np.ndarray], Scorer]


def blocks(s: Scored, vectors: dict[str, np.ndarray], k: int = 10) -> dict[str, np.ndarray]:
    """The feature blocks of each pair: today's lexical features; the vectors ([|u-v|, u*v]);
    two summaries of u-v (L1 and L-infinity norms); and how crowded each text's neighbourhood
    is among the set's texts (the mean cosine r of its k nearest others, as a cache would see
    its namespace), with CSLS = 2 cos - r(a) - r(b): a threshold per entry."""
    u = np.stack([vectors[p.a] for p in s.pairs]).astype(np.float64)
    v = np.stack([vectors[p.b] for p in s.pairs]).astype(np.float64)
    texts = sorted({t for p in s.pairs for t in (p.a, p.b)})
    pool = np.stack([vectors[t] for t in texts]).astype(np.float32)
    crowd = []
    for side in (u, v):
        r = np.empty(len(side))
        for i in range(0, len(side), 512):  # in slices: the training set has ~15,000 texts
            near = side[i : i + 512].astype(np.float32) @ pool.T
            near[near > 0.9999] = -1.0  # the text itself
            r[i : i + 512] = -np.sort(-np.partition(-near, k, axis=1)[:, :k], axis=1).mean(axis=1)
        crowd.append(r)
    ra, rb = crowd
    return {
        "lexical": s.rows,
        "vectors": np.hstack([np.abs(u - v), u * v]),
        "summaries": np.stack([np.abs(u - v).sum(axis=1), np.abs(u - v).max(axis=1)], axis=1),
        "density": np.stack([2 * s.cosine - ra - rb, ra + rb, np.abs(ra - rb)], axis=1),
    }


def logistic(c: float) -> Fitter:
    def fit(x: np.ndarray, y: np.ndarray) -> Scorer:
        from sklearn.linear_model import LogisticRegression

        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y)
        coef, intercept = model.coef_[0], float(model.intercept_[0])

        def predict(rows: np.ndarray) -> np.ndarray:
            out: np.ndarray = 1.0 / (1.0 + np.exp(-(((rows - mean) / scale) @ coef + intercept)))
            return out

        return predict

    return fit


def mlp(hidden: int, alpha: float) -> Fitter:
    def fit(x: np.ndarray, y: np.ndarray) -> Scorer:
        from sklearn.neural_network import MLPClassifier

        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        model = MLPClassifier((hidden,), alpha=alpha, max_iter=300, early_stopping=True, random_state=SEED)
        model.fit((x - mean) / scale, y)
        (w1, w2), (b1, b2) = model.coefs_, model.intercepts_

        def predict(rows: np.ndarray) -> np.ndarray:
            h = np.maximum(((rows - mean) / scale) @ w1 + b1, 0.0)
            out: np.ndarray = 1.0 / (1.0 + np.exp(-(h @ w2 + b2)[:, 0]))
            return out

        return predict

    return fit


def folds_of(n: int) -> np.ndarray:
    order = np.random.default_rng(SEED).permutation(n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % FOLDS
    return fold_of


def out_of_fold(x: np.ndarray, s: Scored, gate: np.ndarray, fit: Fitter) -> np.ndarray:
    """As calibrate.out_of_fold, for any model: each gated pair scored by one that did not see it."""
    p = np.zeros(len(s.pairs))
    fold_of = folds_of(len(s.pairs))
    for k in range(FOLDS):
        train, test = gate & (fold_of != k), gate & (fold_of == k)
        p[test] = fit(x[train], s.same[train])(x[test])
    return p


def choose(x: np.ndarray, s: Scored, fit: Fitter) -> tuple[float, float, np.ndarray]:
    """(floor, threshold, out-of-fold acceptances) with the most out-of-fold hits."""
    best: tuple[float, float, np.ndarray] | None = None
    for floor in FLOORS:
        gate = s.rules_ok & (s.cosine >= floor)
        p = out_of_fold(x, s, gate, fit)
        t = lowest_safe(p, gate, s)
        accept = gate & (p >= t)
        if best is None or rates(accept, s)[0] > rates(best[2], s)[0]:
            best = (floor, t, accept)
    assert best is not None
    return best


def auc(p: np.ndarray, same: np.ndarray) -> float:
    pos, neg = p[same], p[~same]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def figures(name: str, accept: np.ndarray, s: Scored, p: np.ndarray) -> str:
    hit, false, close = rates(accept, s)
    return f"  {name:<44} hit {hit:6.1%}   false {false:6.2%}   close {close:6.2%}   AUC {auc(p, s.same):.3f}"


def vector_check(final: Scorer) -> Callable[[str, str, np.ndarray, np.ndarray], object]:
    """The whole check as a lookup would run it: parse, lexical features, vectors, model."""

    def check(a: str, b: str, u: np.ndarray, v: np.ndarray) -> object:
        pa, pb = parse(a), parse(b)
        u64, v64 = u.astype(np.float64), v.astype(np.float64)
        row = np.concatenate([features(pa, pb, float(u64 @ v64)), np.abs(u64 - v64), u64 * v64])
        return final(row[None, :])[0]

    return check


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="folder of the labelled pairs (default: see services/cache/pairs.py)")
    parser.add_argument("--embeddings", type=Path, help="an .npz file keeping embeddings between runs")
    parser.add_argument(
        "--c", default="0.001,0.003,0.01,0.03,0.1", help="regularisation values to choose from"
    )
    parser.add_argument("--mlp", action="store_true", help="also a one-hidden-layer network")
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds over the question pairs")
    args = parser.parse_args(argv)
    try:
        root = data_dir(args.data)
        train_pairs, dev = training_pairs(root), dev_pairs(root)
    except PairsMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    questions = load_file(QUESTIONS, "jsonl", "questions")
    vectors = embed([t for p in train_pairs + dev + questions for t in (p.a, p.b)], args.embeddings)
    sets = {
        "MRPC dev (held out)": score(dev, vectors),
        "questions (never trained on)": score(questions, vectors),
    }
    train = score(train_pairs, vectors)
    x = {name: blocks(s, vectors) for name, s in sets.items()}
    x_train = blocks(train, vectors)

    candidates: dict[str, tuple[Fitter, tuple[str, ...]]] = {
        "lexical (today's features), C=1": (logistic(1.0), ("lexical",))
    }
    for c in (float(v) for v in args.c.split(",")):
        candidates[f"lexical + |u-v|, u*v, C={c:g}"] = (logistic(c), ("lexical", "vectors"))
    if args.mlp:
        for hidden, alpha in ((32, 1.0), (64, 3.0)):
            candidates[f"MLP {hidden} hidden, alpha {alpha:g}"] = (mlp(hidden, alpha), ("lexical", "vectors"))
    candidates["lexical + L1, Linf of u-v, C=1"] = (logistic(1.0), ("lexical", "summaries"))
    candidates["lexical + neighbourhood (CSLS), C=1"] = (logistic(1.0), ("lexical", "density"))
    paraphrases, n_close = int(train.same.sum()), int(train.close.sum())
    print(f"training pairs: {len(train.pairs)} ({paraphrases} paraphrases, {n_close} close)")
    chosen: dict[str, tuple[float, float, Scorer, tuple[str, ...]]] = {}
    for name, (fit, parts) in candidates.items():
        started = time.process_time()
        rows = np.hstack([x_train[part] for part in parts])
        floor, t, accept = choose(rows, train, fit)
        gate = train.rules_ok & (train.cosine >= floor)
        chosen[name] = (floor, t, fit(rows[gate], train.same[gate]), parts)
        hit, false, close = rates(accept, train)
        print(
            f"  {name:<44} floor {floor:.2f} threshold {t:.4f}: out of fold hit {hit:6.1%}   "
            f"false {false:6.2%}   close {close:6.2%}   ({time.process_time() - started:.0f} s CPU)",
            flush=True,
        )

    weights = json.loads(WEIGHTS.read_text(encoding="utf-8"))
    shipped = Model.from_json(weights)
    for set_name, s in sets.items():
        print(
            f"{set_name}: {len(s.pairs)} pairs, {int(s.same.sum())} paraphrases, {int(s.close.sum())} close"
        )
        print(figures("cosine alone", s.cosine >= weights["cosine_threshold"], s, s.cosine))
        q = shipped.probability(s.rows)
        print(
            figures(
                "shipped default", s.rules_ok & (s.cosine >= shipped.floor) & (q >= shipped.threshold), s, q
            )
        )
        for name, (floor, t, final, parts) in chosen.items():
            p = final(np.hstack([x[set_name][part] for part in parts]))
            print(figures(name, s.rules_ok & (s.cosine >= floor) & (p >= t), s, p))

    # Cost per candidate: the whole check on one core, each prompt parsed anew, as in a lookup.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    learned = build("model", threshold=None, floor=0.0)
    learned.rules = False
    texts = [(p.a, p.b, vectors[p.a], vectors[p.b]) for p in questions]
    checks: dict[str, Callable[[str, str, np.ndarray, np.ndarray], object]] = {
        "today's learned check": lambda a, b, u, v: learned.check(a, b, float(u @ v))
    }
    for name, (_, _, final, parts) in chosen.items():
        if parts == ("lexical", "vectors"):
            checks[name] = vector_check(final)
    times: dict[str, list[float]] = {name: [] for name in checks}
    cpu: dict[str, float] = dict.fromkeys(checks, 0.0)
    for _ in range(args.rounds):
        for a, b, u, v in texts:
            for name, check in checks.items():  # interleaved: the machine's load hits all alike
                parse.cache_clear()
                started, started_cpu = time.perf_counter(), time.process_time()
                check(a, b, u, v)
                cpu[name] += time.process_time() - started_cpu
                times[name].append((time.perf_counter() - started) * 1000)
    for name, values in times.items():
        print(
            f"cost {name:<44} {len(values):5d} checks  p50 {percentile(values, 0.5):6.3f} ms  "
            f"p99 {percentile(values, 0.99):6.3f} ms  CPU mean {cpu[name] / len(values) * 1000:6.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
