"""Rules first, the model when the rules are unsure.

The rule stage answers when its confidence reaches the rules file's threshold; otherwise
the prompt is embedded (micro-batched with concurrent requests by the shared `Encoder`)
and the heads decide the category and the difficulty. While the model loads, or if it
failed to load, the rules answer everything (`method` says which stage decided).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Literal

from services.classifier.heads import Heads
from services.classifier.prompt import Prompt
from services.classifier.rules import RuleClassifier, RuleVerdict
from services.kernel.encoder import Encoder

log = logging.getLogger("gateway.classifier")

Method = Literal["rules", "model"]
Requested = Literal["auto", "rules", "model"]


class ModelNotReady(Exception):
    """`method: model` was asked for while the model is loading (or failed to load)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Classification:
    """The classifier's answer for one prompt."""

    category: str
    difficulty: float  # how likely a cheap model is to fail it: 0 = any model will do
    confidence: float  # probability of `category` according to the stage that decided
    method: Method
    seconds: float
    scores: Mapping[str, float]

    @classmethod
    def from_rules(cls, verdict: RuleVerdict, started: float) -> Classification:
        return cls(
            verdict.category,
            round(verdict.difficulty, 4),
            round(verdict.confidence, 4),
            "rules",
            time.perf_counter() - started,
            verdict.scores,
        )


class Cascade:
    """The two stages together; `classify` is safe to call concurrently."""

    def __init__(self, rules: RuleClassifier, heads: Heads | None, encoder: Encoder | None) -> None:
        if heads is not None and set(heads.categories) != set(rules.categories):
            raise ValueError(
                f"the heads know {sorted(heads.categories)}, the rules {sorted(rules.categories)}: "
                "retrain the heads (make train-classifier) after changing the categories"
            )
        self.rules = rules
        self.heads = heads
        self.encoder = encoder

    @property
    def mismatch(self) -> str | None:
        """Why the loaded encoder cannot serve these heads (trained on another model's
        vectors), if so: the rules then answer everything, and the service is not ready."""
        if self.heads is None or self.encoder is None or self.encoder.backend is None:
            return None
        return self.heads.mismatch(self.encoder.backend)

    @property
    def model_ready(self) -> bool:
        return (
            self.heads is not None
            and self.encoder is not None
            and self.encoder.ready
            and self.mismatch is None
        )

    async def classify(self, prompt: Prompt, method: Requested = "auto") -> Classification:
        started = time.perf_counter()
        if method == "model" and not self.model_ready:
            raise ModelNotReady("the classification model is not loaded yet")
        verdict = None if method == "model" else self.rules.classify(prompt)  # "model": no need
        if verdict is not None and (
            method == "rules" or verdict.confidence >= self.rules.confidence or not self.model_ready
        ):
            return Classification.from_rules(verdict, started)
        assert self.heads is not None
        assert self.encoder is not None
        text = prompt.text
        try:
            embedding = await self.encoder.encode([text])
        except Exception as exc:  # the model failing must not fail the request: the rules answer
            log.warning("embedding failed; the rules answer", extra={"error": type(exc).__name__})
            if verdict is None:
                raise ModelNotReady(f"the classification model failed: {type(exc).__name__}") from None
            return Classification.from_rules(verdict, started)
        probabilities = self.heads.category_probabilities(embedding)[0]
        best = int(probabilities.argmax())
        difficulty = float(self.heads.difficulty(embedding, [prompt.user])[0])
        return Classification(
            self.heads.categories[best],
            round(difficulty, 4),
            round(float(probabilities[best]), 4),
            "model",
            time.perf_counter() - started,
            {c: round(float(p), 4) for c, p in zip(self.heads.categories, probabilities, strict=True)},
        )
