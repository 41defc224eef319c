"""How the classifier is measured: routing quality (APGR, CPT) and category accuracy.

Routing, after RouteLLM (Ong et al., 2024): a router scores each prompt; for the
quantile thresholds t of the scores (`points + 1` edges, from the minimum to the
maximum), the prompts scoring ≥ t go to the strong model (the last edge uses > t, so
the curve runs from 100 % to 0 % strong calls). Each threshold gives a point (share of
strong calls, accuracy of the mix).
- APGR: (area under that curve - weak accuracy) / (strong accuracy - weak accuracy),
  trapezoids over the share of strong calls; a random router scores ~0.5.
- CPT(x): the smallest share of strong calls whose accuracy recovers x of the gap
  between the weak and the strong model (linear between the curve's points).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def routing_curve(
    scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, points: int = 10
) -> list[tuple[float, float]]:
    """(share of strong calls, accuracy) for each quantile threshold, by increasing share."""
    scores = np.asarray(scores, dtype=float)
    weak = np.asarray(weak, dtype=float)
    strong = np.asarray(strong, dtype=float)
    edges = np.quantile(scores, np.linspace(0, 1, points + 1))
    curve = []
    for i, threshold in enumerate(edges):
        chosen = scores >= threshold if i < points else scores > threshold
        curve.append((float(chosen.mean()), float(np.where(chosen, strong, weak).mean())))
    return sorted(curve)


def apgr(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, points: int = 10) -> float:
    curve = routing_curve(scores, weak, strong, points)
    share = np.array([c[0] for c in curve])
    accuracy = np.array([c[1] for c in curve])
    w, s = float(np.mean(weak)), float(np.mean(strong))
    if s == w:
        return float("nan")
    span = share[-1] - share[0]
    area = float(np.sum((share[1:] - share[:-1]) * (accuracy[1:] + accuracy[:-1]) / 2))
    return float((area - w * span) / ((s - w) * span))


def cpt(
    scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, recovered: float = 0.5, points: int = 10
) -> float:
    curve = routing_curve(scores, weak, strong, points)
    w, s = float(np.mean(weak)), float(np.mean(strong))
    target = w + recovered * (s - w)
    if curve[0][1] >= target:
        return curve[0][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if y1 >= target:
            return x0 + (target - y0) / (y1 - y0) * (x1 - x0)
    return 1.0


def confusion(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Rows: true label; columns: predicted label."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return matrix


def per_class(matrix: np.ndarray) -> list[tuple[float, float, float, int]]:
    """(precision, recall, F1, support) per label of a confusion matrix."""
    out = []
    for i in range(len(matrix)):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out.append((float(p), float(r), float(f), int(actual)))
    return out


def accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / max(1, len(truth))
