"""Classifier service: `POST /v1/classify` — task category, difficulty, confidence, method.

Rules first, the model when they are unsure (`cascade.py`). The service answers from
its first second with the rules; it is *ready* (`/readyz`) once the embedding model and
the heads are loaded. Embedded, the gateway passes in the process's shared `Encoder`.

Request: `{"messages": [OpenAI chat messages], "method": "auto" | "rules" | "model"}`.
Response: `{"category", "difficulty", "confidence", "method", "elapsed_ms", "scores"}`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.classifier.cascade import Cascade, Classification, ModelNotReady
from services.classifier.heads import Heads, HeadsError
from services.classifier.prompt import from_messages
from services.classifier.rules import RuleClassifier
from services.kernel.encoder import Encoder, classifier_backend
from services.kernel.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable
from services.kernel.service import ServiceApp, build_app, json_response
from services.kernel.settings import Settings

log = logging.getLogger("gateway.classifier")
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
METHODS = ("auto", "rules", "model")
MAX_MESSAGES = 100_000


class ClassifierMetrics:
    def __init__(self, registry: CollectorRegistry, categories: tuple[str, ...]) -> None:
        self.categories = frozenset(categories)
        self.classified = Counter(
            "classifier_requests_total",
            "Prompts classified, by deciding stage and category",
            ["method", "category"],
            registry=registry,
        )
        self.seconds = Histogram(
            "classifier_duration_seconds",
            "Time to classify one prompt, by deciding stage",
            ["method"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.model_ready = Gauge(
            "classifier_model_ready", "1 once the embedding model and heads are loaded", registry=registry
        )

    def record(self, result: Classification) -> None:
        # Categories come from the rules file (configuration), never from the request.
        category = result.category if result.category in self.categories else "other"
        self.classified.labels(result.method, category).inc()
        self.seconds.labels(result.method).observe(result.seconds)


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(raw: bytes) -> tuple[list[Any], str]:
    """(messages, method) of a classify request; InvalidRequest (400) naming the field."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"'messages' has more than {MAX_MESSAGES} items.", param="messages")
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in messages[-64:]):
        raise InvalidRequest("'messages' needs a user message among its last 64 items.", param="messages")
    method = body.get("method", "auto")
    if method not in METHODS:
        raise InvalidRequest(f"'method' must be one of {', '.join(METHODS)}.", param="method")
    return messages, method


def as_json(result: Classification) -> dict[str, object]:
    return {
        "category": result.category,
        "difficulty": result.difficulty,
        "confidence": result.confidence,
        "method": result.method,
        "elapsed_ms": round(result.seconds * 1000, 4),
        "scores": dict(result.scores),
    }


def create_app(
    settings: Settings, *, process_metrics: bool = True, encoder: Encoder | None = None
) -> ServiceApp:
    """The classifier. `encoder`: a shared one (embedded gateway); else the app makes its own."""
    config = settings.config.classifier
    rules = RuleClassifier.load(Path(config.rules_file) if config.rules_file else None)
    registry = CollectorRegistry()
    metrics = ClassifierMetrics(registry, rules.categories)
    state: dict[str, Any] = {"cascade": Cascade(rules, None, None), "heads_error": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        heads = None
        try:
            heads = Heads.load(Path(config.heads_file) if config.heads_file else None)
        except HeadsError as exc:
            # The service still answers with the rules; it never becomes ready.
            state["heads_error"] = str(exc)
            log.error("classifier heads not loaded; answering with the rules only", extra={"error": str(exc)})
        enc = None
        if heads is not None:
            enc = encoder or Encoder(
                max_batch=config.max_batch,
                threads=config.encoder_threads,
                backend=classifier_backend(config.encoder_backend),
            )
            await enc.start()  # loads in the background: the rules answer meanwhile
        state["cascade"] = Cascade(rules, heads, enc)
        try:
            yield
        finally:
            if enc is not None:
                await enc.aclose()

    async def ready() -> dict[str, str]:
        cascade: Cascade = state["cascade"]
        metrics.model_ready.set(1 if cascade.model_ready else 0)
        if state["heads_error"]:
            return {"model": "heads not loaded (see the log)"}
        if cascade.mismatch:
            return {"model": cascade.mismatch}
        return {"model": "ok" if cascade.model_ready else "loading"}

    async def classify(request: Request) -> Response:
        messages, method = parse_request(await _read(request, config.max_body_bytes))
        cascade: Cascade = state["cascade"]
        try:
            result = await cascade.classify(from_messages(messages), method)  # type: ignore[arg-type]
        except ModelNotReady as exc:
            raise ServiceUnavailable(f"{exc}; retry later or ask for method 'rules'.") from None
        metrics.record(result)
        return json_response(as_json(result))

    routes = [
        Route("/v1/classify", classify, methods=["POST"]),
        Route("/classify", classify, methods=["POST"]),
    ]
    return build_app(
        "classifier",
        routes=routes,
        lifespan=lifespan,
        ready=ready,
        registry=registry,
        process_metrics=process_metrics,
    )
