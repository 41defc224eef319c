"""The resolve stage for routing aliases: table lookup, reasons, and every way the
classifier can fail (down, slow, nonsense) ending in the in-process rule stage."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from services.classifier.client import ClassifierClient
from services.classifier.rules import RuleClassifier
from services.kernel.config import Catalog, ConfigError, RoutingConfig
from services.kernel.errors import Forbidden, InvalidRequest, NotFound
from services.kernel.principal import Principal
from services.router.autoroute import AutoResolver, band_of
from services.router.exchange import Exchange
from services.router.metrics import RouterMetrics
from services.router.routing import CatalogResolver
from tests.e2e.conftest import metric_value
from tests.unit.deployments import deployment

CHEAP = deployment("cheap", provider="mock", model="cheap-v1")
STRONG = deployment("strong", provider="mock", model="strong-v1")
CATALOG = Catalog(models={"cheap": (CHEAP,), "strong": (STRONG,)})
RULES = RuleClassifier.load()
ROUTING = RoutingConfig.model_validate(
    {
        "default": ["cheap"],
        "table": {
            "code": {"easy": "cheap", "medium": "strong", "hard": "strong"},
            "translation": "cheap",
            "general": {"easy": "cheap", "hard": ["missing-model", "strong"]},
        },
        "aliases": {"auto": {"medium": 0.3, "hard": 0.45}, "auto-best": {"medium": 0, "hard": 0}},
        "classifier_timeout_ms": 50,
        "classifier_retry_s": 30,
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    classifier: ClassifierClient | None = None, clock: Clock | None = None
) -> tuple[AutoResolver, CollectorRegistry]:
    registry = CollectorRegistry()
    auto = AutoResolver(
        CatalogResolver(CATALOG),
        ROUTING,
        RULES,
        classifier=classifier,
        metrics=RouterMetrics(registry),
        registry=registry,
        clock=clock or Clock(),
    )
    return auto, registry


def resolver(classifier: ClassifierClient | None = None, clock: Clock | None = None) -> AutoResolver:
    return make(classifier, clock)[0]


def exchange(text: str, principal: Principal | None = None) -> Exchange:
    ex = Exchange("r", "chat.completions", principal=principal)
    ex.body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    return ex


def outcomes(registry: CollectorRegistry, outcome: str) -> float:
    text = generate_latest(registry).decode()
    return metric_value(text, "gateway_stage_outcomes_total", stage="classifier", outcome=outcome)


def test_bands_start_at_the_alias_thresholds():
    alias = ROUTING.aliases["auto"]
    assert [band_of(d, alias) for d in (0.0, 0.29, 0.3, 0.44, 0.45, 1.0)] == [
        "easy",
        "easy",
        "medium",
        "medium",
        "hard",
        "hard",
    ]


HARD_CODE = "Write a Python function that merges k sorted lists without using heapq; handle the edge cases."
EASY_CODE = "Write a Python function to sort a list."


async def test_without_a_classifier_the_rules_route_and_the_reason_says_so():
    route = await resolver().resolve(exchange(HARD_CODE), "auto")
    assert route.model == "strong"  # code with constraints: the medium band, the strong model
    assert route.reason.startswith("auto: category=code; difficulty=0.")
    assert route.reason.endswith("method=rules")
    assert route.deployments == (STRONG,)
    easy = await resolver().resolve(exchange(EASY_CODE), "auto")
    assert easy.model == "cheap"
    assert "band=easy" in easy.reason


async def test_an_easy_translation_goes_to_the_cheap_model():
    route = await resolver().resolve(exchange("Translate 'good morning' into French."), "auto")
    assert (route.model, "category=translation" in route.reason) == ("cheap", True)


async def test_each_alias_has_its_own_thresholds():
    text = "hello there!"
    assert (await resolver().resolve(exchange(text), "auto")).model == "cheap"
    best = await resolver().resolve(exchange(text), "auto-best")  # everything is "hard" for auto-best
    assert best.model == "strong"
    assert "band=hard" in best.reason


async def test_a_listed_model_without_a_usable_deployment_is_skipped():
    route = await resolver().resolve(exchange("hello"), "auto-best")  # general/hard: [missing-model, strong]
    assert route.model == "strong"


async def test_plain_names_are_resolved_by_the_catalog():
    route = await resolver().resolve(exchange("hi"), "cheap")
    assert (route.model, route.reason) == ("cheap", "")
    with pytest.raises(NotFound):
        await resolver().resolve(exchange("hi"), "nope")


async def test_auto_is_for_chat_completions_only():
    ex = Exchange("r", "embeddings")
    ex.body = {"model": "auto", "input": "hi"}
    with pytest.raises(InvalidRequest) as err:
        await resolver().resolve(ex, "auto")
    assert err.value.param == "model"


async def test_a_key_needs_the_alias_in_its_allowlist():
    limited = Principal("k", "member", models=frozenset({"cheap"}))
    with pytest.raises(Forbidden):
        await resolver().resolve(exchange("hi", limited), "auto")
    allowed = Principal("k", "member", models=frozenset({"auto"}))
    route = await resolver().resolve(exchange(HARD_CODE, allowed), "auto")
    assert route.model == "strong"  # the alias grants the models of its table


def test_a_table_category_the_rules_do_not_know_stops_the_start():
    bad = ROUTING.model_copy(update={"table": {"astrology": ROUTING.table["code"]}})
    with pytest.raises(ConfigError, match="astrology"):
        AutoResolver(
            CatalogResolver(CATALOG),
            bad,
            RULES,
            classifier=None,
            metrics=RouterMetrics(CollectorRegistry()),
            registry=CollectorRegistry(),
        )


def classifier_app(handler) -> ClassifierClient:
    app = Starlette(routes=[StarletteRoute("/v1/classify", handler, methods=["POST"])])
    return ClassifierClient.in_process(app)  # type: ignore[return-value]


async def test_the_classifier_decides_when_it_answers():
    async def answer(request):
        return JSONResponse(
            {"category": "code", "difficulty": 0.05, "confidence": 0.9, "method": "model", "scores": {}}
        )

    client = classifier_app(answer)
    try:
        route = await resolver(client).resolve(exchange("anything at all"), "auto")
    finally:
        await client.aclose()
    assert route.model == "cheap"  # code, easy band
    assert route.reason == "auto: category=code; difficulty=0.05; band=easy; method=model"


async def test_a_slow_classifier_times_out_and_the_rules_route():
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return JSONResponse({})

    client = classifier_app(slow)
    auto, registry = make(client)
    try:
        route = await auto.resolve(exchange("Translate 'hi' into Dutch."), "auto")
    finally:
        release.set()
        await client.aclose()
    assert route.model == "cheap"
    assert route.reason.endswith("method=rules")
    assert outcomes(registry, "timed_out") == 1


@pytest.mark.parametrize(
    "answer",
    [
        JSONResponse({"error": {"message": "boom"}}, status_code=500),
        JSONResponse({"category": "code"}),
        JSONResponse({"category": "code", "difficulty": "NaN", "confidence": 1, "method": "model"}),
        JSONResponse([1, 2, 3]),
    ],
)
async def test_a_failing_classifier_is_skipped_for_a_while_then_tried_again(answer):
    calls = 0

    async def handler(request):
        nonlocal calls
        calls += 1
        return answer

    clock = Clock()
    client = classifier_app(handler)
    auto, registry = make(client, clock)
    try:
        first = await auto.resolve(exchange("Translate 'hi' into Dutch."), "auto")
        second = await auto.resolve(exchange("Translate 'hi' into Dutch."), "auto")
        clock.now += ROUTING.classifier_retry_s
        await auto.resolve(exchange("Translate 'hi' into Dutch."), "auto")
    finally:
        await client.aclose()
    assert first.reason.endswith("method=rules")
    assert second.reason.endswith("method=rules")
    assert calls == 2  # the second request did not wait on a classifier known to be failing
    assert outcomes(registry, "failed") == 2
    assert outcomes(registry, "skipped") == 1


async def test_a_classifier_that_is_down_never_fails_auto():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        client = ClassifierClient.over_http(f"http://127.0.0.1:{s.getsockname()[1]}")
        try:
            route = await resolver(client).resolve(exchange("Write a poem about the sea."), "auto")
        finally:
            await client.aclose()
    assert route.reason.endswith("method=rules")
    assert "category=creative_writing" in route.reason


async def test_a_category_the_table_does_not_name_goes_to_the_default():
    route = await resolver().resolve(exchange("Pretend you are a pirate and greet me."), "auto")
    assert (route.model, "category=roleplay" in route.reason) == ("cheap", True)
