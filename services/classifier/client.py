"""The only module of the classifier service that other services import.

`ClassifierClient.classify` calls the service (over HTTP, or in-process when embedded);
`RuleClassifier` and `from_messages` let a caller run the rule stage itself, from the
same rules file, when the service is slow or down.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import orjson

from services.classifier.cascade import Classification
from services.classifier.prompt import Prompt, from_messages
from services.classifier.rules import RuleClassifier, RulesError
from services.kernel.client import ServiceClient

__all__ = [
    "Classification",
    "ClassifierClient",
    "ClassifierUnavailable",
    "Prompt",
    "RuleClassifier",
    "RulesError",
    "from_messages",
    "local_classification",
]


class ClassifierUnavailable(Exception):
    """The service did not answer in time, or not with a classification."""


def local_classification(rules: RuleClassifier, prompt: Prompt) -> Classification:
    """The rule stage, in this process (no I/O, well under a millisecond)."""
    started = time.perf_counter()
    return Classification.from_rules(rules.classify(prompt), started)


def _parse(data: Any, started: float) -> Classification:
    try:
        category, difficulty, confidence, method = (
            data["category"],
            float(data["difficulty"]),
            float(data["confidence"]),
            data["method"],
        )
    except (KeyError, TypeError, ValueError):
        raise ClassifierUnavailable("the classifier answered without a classification") from None
    if not isinstance(category, str) or method not in ("rules", "model"):
        raise ClassifierUnavailable("the classifier answered an unknown category or method")
    if not (math.isfinite(difficulty) and math.isfinite(confidence)):
        raise ClassifierUnavailable("the classifier answered a non-finite score")
    scores = data.get("scores")
    return Classification(
        category,
        min(1.0, max(0.0, difficulty)),
        min(1.0, max(0.0, confidence)),
        method,
        time.perf_counter() - started,
        scores if isinstance(scores, dict) else {},
    )


class ClassifierClient(ServiceClient):
    service = "classifier"

    async def classify(self, prompt: Prompt, *, timeout_s: float, method: str = "auto") -> Classification:
        """The service's classification of `prompt` (sent bounded, as chat messages);
        raise ClassifierUnavailable after `timeout_s` seconds or on any failure."""
        started = time.perf_counter()
        messages = [{"role": "user", "content": prompt.user}]
        if prompt.system:
            messages.insert(0, {"role": "system", "content": prompt.system})
        body = orjson.dumps({"messages": messages, "method": method})
        try:
            response = await self.http.post(
                "/v1/classify",
                content=body,
                headers={"content-type": "application/json"},
                timeout=timeout_s,
            )
        except httpx.HTTPError as exc:
            raise ClassifierUnavailable(f"classifier unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ClassifierUnavailable(f"classifier answered {response.status_code}")
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ClassifierUnavailable("the classifier answered something other than JSON") from None
        return _parse(data, started)
