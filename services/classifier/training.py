"""Fitting the heads: embeddings (cached on disk), then scikit-learn logistic regressions.

Used by `train.py` (writes the shipped heads) and `evaluate.py` (cross-validation), at
build time only: serving loads the fitted weights with numpy (`heads.py`).

Embedding the ~12,000 training texts takes minutes on two cores, so vectors are cached
in a file keyed by the backend and the text's hash (`--cache`, under `data/` by default,
which git ignores); a second run only embeds new texts.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.classifier.corpus import Outcome
from services.classifier.heads import Heads
from services.classifier.prompt import FEATURES, features, of_text
from services.kernel.encoder import DIMENSIONS, MAX_CHARS, Backend, classifier_backend, load_backend

CATEGORY_C = 4.0  # inverse regularisation of the category head
DIFFICULTY_C = 0.3  # of the difficulty head (chosen by 5-fold cross-validation grouped by subject)
SEED = 0


class EmbeddingCache:
    """Text → embedding, computed by the classifier's serving backend (`classifier_backend`:
    the int8 model once exported), kept in one .npz file."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int = 2,
        batch: int = 16,
        backend: Backend | None = None,
        model_file: Path | None = None,
    ) -> None:
        self.path = path
        self.threads = threads
        self.requested_backend = backend or classifier_backend()
        self.model_file = model_file  # another ONNX file for the backend (e.g. another layer count)
        self.batch = batch
        self._model: Any = None
        self.backend = ""
        self.vectors: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                self.vectors = dict(zip((str(k) for k in f["keys"]), f["vectors"], strict=True))

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.backend}\0{text[:MAX_CHARS]}".encode()).hexdigest()[:32]

    def embed_prompts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of raw prompts as the classifier embeds them (`Prompt.text`)."""
        return self.embed([of_text(t).text for t in texts])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            self.backend, self._model = load_backend(self.requested_backend, self.model_file, self.threads)
        missing = sorted({t for t in texts if self._key(t) not in self.vectors}, key=len)
        started = time.monotonic()
        for i in range(0, len(missing), self.batch):
            chunk = missing[i : i + self.batch]
            vectors = self._model.embed([t[:MAX_CHARS] for t in chunk])
            for text, vector in zip(chunk, vectors, strict=True):
                self.vectors[self._key(text)] = vector
            if (i // self.batch) % 50 == 0:
                done = i + len(chunk)
                print(
                    f"  embedded {done}/{len(missing)} ({time.monotonic() - started:.0f} s)", file=sys.stderr
                )
        if missing:
            self.save()
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self.vectors[self._key(text)]
        return out

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.vectors))
        vectors = np.stack(list(self.vectors.values())) if self.vectors else np.zeros((0, DIMENSIONS))
        partial = self.path.with_name(self.path.name + ".partial.npz")
        np.savez(partial, keys=keys, vectors=vectors)
        partial.replace(self.path)


def fit_category(
    embeddings: np.ndarray, labels: Sequence[str], categories: Sequence[str]
) -> tuple[np.ndarray, ...]:
    """(weights (categories, 384), bias) of a multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=CATEGORY_C, max_iter=3000, class_weight="balanced", random_state=SEED)
    model.fit(embeddings, list(labels))
    order = [list(model.classes_).index(c) for c in categories]
    return model.coef_[order].astype(np.float32), model.intercept_[order].astype(np.float32)


def feature_matrix(texts: Sequence[str]) -> np.ndarray:
    """Structure features of raw prompts, as the classifier computes them (`Prompt.user`)."""
    rows = [features(of_text(t).user) for t in texts]
    return np.array(rows, dtype=np.float32).reshape(len(texts), len(FEATURES))


def fit_difficulty(
    embeddings: np.ndarray, texts: Sequence[str], rows: Sequence[Outcome]
) -> tuple[np.ndarray, ...]:
    """(weights (1, 384 + features), bias (1,), feature mean, feature std): a logistic
    regression for "the cheap model fails this question".

    Also tried, grouped 5-fold by subject: the product with a second regression for "the
    strong model succeeds" (the gain an escalation can bring), embeddings alone, features
    alone, C from 0.01 to 0.3: every variant within 0.01 APGR of this one."""
    from sklearn.linear_model import LogisticRegression

    raw = feature_matrix(texts)
    mean, std = raw.mean(axis=0), raw.std(axis=0) + 1e-6
    inputs = np.hstack([embeddings, (raw - mean) / std])
    weak_fails = np.array([not r.weak_correct for r in rows])
    model = LogisticRegression(C=DIFFICULTY_C, max_iter=3000, random_state=SEED).fit(inputs, weak_fails)
    return (
        model.coef_.astype(np.float32),
        model.intercept_.astype(np.float32),
        mean.astype(np.float32),
        std.astype(np.float32),
    )


def build_heads(
    categories: Sequence[str],
    category_fit: tuple[np.ndarray, ...],
    difficulty_fit: tuple[np.ndarray, ...],
    info: dict[str, object],
) -> Heads:
    cw, cb = category_fit
    dw, db, mean, std = difficulty_fit
    return Heads(tuple(categories), cw, cb, dw, db, mean, std, info)
