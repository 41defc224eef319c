"""The ML stage's trained heads: small linear models over the sentence embedding.

- category: multinomial logistic regression, embedding → one probability per category;
- difficulty: logistic regression over the embedding plus the structure features of
  `prompt.features` (standardised): how likely the cheap model is to fail the prompt.
  (The file may hold several such regressions; the score is then the product of their
  probabilities.)

`make train-classifier` writes them to `heads.npz` (a few tens of KB); loading is numpy
only and takes milliseconds, inference is a matrix-vector product (microseconds).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from services.classifier.prompt import FEATURES, features
from services.kernel.encoder_onnx import FILE_NAME as FLOAT_FILE

DEFAULT_HEADS = Path(__file__).with_name("heads.npz")


class HeadsError(Exception):
    """The heads file is missing or does not fit this code (wrong shapes or names)."""


@dataclasses.dataclass(frozen=True)
class Heads:
    categories: tuple[str, ...]
    category_w: np.ndarray  # (categories, 384)
    category_b: np.ndarray  # (categories,)
    difficulty_w: np.ndarray  # (components, 384 + features)
    difficulty_b: np.ndarray  # (components,)
    feature_mean: np.ndarray  # (features,)
    feature_std: np.ndarray  # (features,)
    info: dict[str, object]  # how they were trained (written by train.py)

    @classmethod
    def load(cls, path: Path | None = None) -> Heads:
        path = path or DEFAULT_HEADS
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise HeadsError(f"{path}: cannot read the heads: {exc}") from None
        try:
            heads = cls(
                categories=tuple(str(c) for c in arrays["categories"]),
                category_w=arrays["category_w"].astype(np.float32),
                category_b=arrays["category_b"].astype(np.float32),
                difficulty_w=arrays["difficulty_w"].astype(np.float32),
                difficulty_b=arrays["difficulty_b"].astype(np.float32),
                feature_mean=arrays["feature_mean"].astype(np.float32),
                feature_std=arrays["feature_std"].astype(np.float32),
                info=json.loads(str(arrays["info"])),
            )
        except KeyError as exc:
            raise HeadsError(f"{path}: missing array {exc}") from None
        names = tuple(str(n) for n in arrays.get("features", np.array(FEATURES)))
        if names != FEATURES:
            raise HeadsError(f"{path}: trained with features {names}, this code computes {FEATURES}")
        dims = heads.category_w.shape[1]
        if heads.difficulty_w.shape[1] != dims + len(FEATURES):
            raise HeadsError(f"{path}: difficulty head expects {heads.difficulty_w.shape[1]} inputs")
        return heads

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            categories=np.array(self.categories),
            category_w=self.category_w,
            category_b=self.category_b,
            difficulty_w=self.difficulty_w,
            difficulty_b=self.difficulty_b,
            feature_mean=self.feature_mean,
            feature_std=self.feature_std,
            features=np.array(FEATURES),
            info=np.array(json.dumps(self.info, sort_keys=True)),
        )

    def mismatch(self, backend: str) -> str | None:
        """Why an encoder's vectors (`Encoder.backend`) do not fit these heads, or None. The
        heads learnt one model's vector space: another model's vectors (the int8 first
        layers against the float six) would be classified at random. The torch backend and
        the float ONNX model compute the same vectors."""
        trained = str(self.info.get("backend") or "")
        same = {"torch": f"onnx:{FLOAT_FILE}"}
        if not trained or same.get(trained, trained) == same.get(backend, backend):
            return None
        return (
            f"the heads were trained on the vectors of {trained}, the encoder is {backend}: "
            "set classifier.encoder_backend to match, or retrain the heads (make train-classifier)"
        )

    def category_probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, categories) probabilities for (n, 384) embeddings."""
        logits = embeddings @ self.category_w.T + self.category_b
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
        return probabilities

    def difficulty_inputs(self, embeddings: np.ndarray, texts: list[str]) -> np.ndarray:
        raw = np.array([features(t) for t in texts], dtype=np.float32).reshape(len(texts), len(FEATURES))
        return np.hstack([embeddings, (raw - self.feature_mean) / self.feature_std])

    def difficulty(self, embeddings: np.ndarray, texts: list[str]) -> np.ndarray:
        """(n,) difficulty scores in [0, 1]; `texts` are the user messages (`Prompt.user`),
        whose structure features complete the embeddings of their `Prompt.text`."""
        logits = self.difficulty_inputs(embeddings, texts) @ self.difficulty_w.T + self.difficulty_b
        scores: np.ndarray = np.prod(1.0 / (1.0 + np.exp(-logits)), axis=1)
        return scores
