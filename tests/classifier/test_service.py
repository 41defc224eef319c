"""The classifier service over real HTTP: rules first, the model when unsure, bad input."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.classifier import app as classifier_app
from services.classifier.rules import RuleClassifier
from tests.conftest import MASTER_KEY, make_settings
from tests.e2e.conftest import assert_openai_error, metric_value

CATEGORIES = set(RuleClassifier.load().categories)


@pytest.fixture
async def http(classifier_service):
    async with httpx.AsyncClient(base_url=classifier_service.url, timeout=30) as client:
        yield client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def check_shape(body: dict) -> None:
    assert set(body) == {"category", "difficulty", "confidence", "method", "elapsed_ms", "scores"}
    assert body["category"] in CATEGORIES
    assert 0 <= body["difficulty"] <= 1
    assert 0 <= body["confidence"] <= 1
    assert body["method"] in ("rules", "model")
    assert body["elapsed_ms"] >= 0
    assert set(body["scores"]) == CATEGORIES


async def test_a_clear_prompt_is_answered_by_the_rules(http):
    response = await http.post(
        "/v1/classify", json={"messages": user("Translate 'good night' into Italian.")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    check_shape(body)
    assert (body["category"], body["method"]) == ("translation", "rules")


async def test_an_unclear_prompt_goes_to_the_model(http):
    question = (
        "Which of the following best explains why the price of a good rises when its supply falls?\n"
        "A. Demand shifts left\nB. Scarcity raises the market-clearing price\nC. Taxes fall\nD. None\nAnswer:"
    )
    body = (await http.post("/v1/classify", json={"messages": user(question)})).json()
    check_shape(body)
    assert body["method"] == "model"
    assert body["category"] == "general"


async def test_the_model_can_be_asked_for_and_knows_the_categories(http):
    cases = {
        "Write a haiku about rain on a tin roof.": "creative_writing",
        "Give me a Go function that parses a CSV line into fields.": "code",
    }
    for text, category in cases.items():
        body = (await http.post("/v1/classify", json={"messages": user(text), "method": "model"})).json()
        check_shape(body)
        assert (body["category"], body["method"]) == (category, "model"), text


async def test_concurrent_requests_are_all_answered(http):
    texts = [
        f"Which of the following is true of subject {i}?\nA. a\nB. b\nC. c\nD. d\nAnswer:" for i in range(32)
    ]
    responses = await asyncio.gather(
        *(http.post("/v1/classify", json={"messages": user(t), "method": "model"}) for t in texts)
    )
    assert [r.status_code for r in responses] == [200] * 32
    assert {r.json()["method"] for r in responses} == {"model"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b"{}", "messages"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": "hello"}', "messages"),
        (b'{"messages": [{"role": "assistant", "content": "hi"}]}', "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "method": "magic"}', "method"),
    ],
)
async def test_bad_requests_get_an_openai_error(http, body, param):
    response = await http.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, param=param)


async def test_a_body_over_the_limit_is_413(http):
    response = await http.post("/v1/classify", content=b"x" * (2 << 20))
    assert_openai_error(response, 413)


async def test_wrong_method_is_405(http):
    assert_openai_error(await http.get("/v1/classify"), 405)


async def test_metrics_count_by_method_and_category(http):
    await http.post("/v1/classify", json={"messages": user("hello!")})
    text = (await http.get("/metrics", headers={"authorization": f"Bearer {MASTER_KEY}"})).text
    assert metric_value(text, "classifier_requests_total", method="rules", category="general") >= 1
    assert metric_value(text, "classifier_model_ready") == 1


async def test_without_heads_the_service_answers_by_rules_and_is_not_ready(tmp_path):
    settings = make_settings(
        tmp_path,
        f"""
classifier:
  heads_file: {tmp_path / "missing.npz"}
models:
  - name: m
    deployments: [{{provider: mock, model: m}}]
""",
    )
    app = classifier_app.create_app(settings, process_metrics=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://classifier") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "heads" in ready.json()["checks"]["model"]
            unclear = user(
                "Which of the following is a mammal?\nA. Shark\nB. Whale\nC. Trout\nD. Eel\nAnswer:"
            )
            body = (await client.post("/v1/classify", json={"messages": unclear})).json()
            assert body["method"] == "rules"
            forced = await client.post("/v1/classify", json={"messages": unclear, "method": "model"})
            assert_openai_error(forced, 503)


async def test_heads_trained_on_another_models_vectors_are_refused(tmp_path):
    """The shipped heads learnt the int8 encoder's vectors: with the float model the service
    answers by its rules and says why it is not ready, instead of classifying at random."""
    settings = make_settings(
        tmp_path,
        """
classifier:
  encoder_backend: onnx
models:
  - name: m
    deployments: [{provider: mock, model: m}]
""",
    )
    app = classifier_app.create_app(settings, process_metrics=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://classifier") as client:
            for _ in range(100):  # the model loads in the background, about a second
                ready = await client.get("/readyz")
                if "trained on" in ready.json()["checks"]["model"]:
                    break
                await asyncio.sleep(0.1)
            assert ready.status_code == 503
            assert "make train-classifier" in ready.json()["checks"]["model"]
            unclear = user(
                "Which of the following is a mammal?\nA. Shark\nB. Whale\nC. Trout\nD. Eel\nAnswer:"
            )
            body = (await client.post("/v1/classify", json={"messages": unclear})).json()
            assert body["method"] == "rules"
