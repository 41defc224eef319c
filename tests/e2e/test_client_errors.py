"""Requests the gateway must refuse, over raw HTTP: status and OpenAI's error shape."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.conftest import MASTER_KEY, MAX_BODY_BYTES, assert_openai_error, user

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
OK_MESSAGES = user("hello")


def post_raw(http: httpx.AsyncClient, path: str, content: bytes) -> Any:
    return http.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
@pytest.mark.parametrize(
    "content",
    [b"", b"{", b'{"model": "mock-small",}', b"\xff\xfe\x00", b"NaN", b'{"model": 1e400}'],
    ids=["empty", "truncated", "trailing-comma", "not-utf8", "nan", "infinite"],
)
async def test_malformed_json_is_400(http, path, content):
    assert_openai_error(await post_raw(http, path, content), 400, type_="invalid_request_error")


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
@pytest.mark.parametrize("content", [b"[]", b"null", b'"text"', b"42", b"true"])
async def test_body_that_is_not_an_object_is_400(http, path, content):
    assert_openai_error(await post_raw(http, path, content), 400, type_="invalid_request_error")


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "mock-small", "messages": OK_MESSAGES, **fields}


CHAT_SCHEMA_ERRORS = {
    # id: (body, the param the error must name)
    "model-missing": ({"messages": OK_MESSAGES}, "model"),
    "model-empty": (chat(model=""), "model"),
    "model-number": (chat(model=5), "model"),
    "model-too-long": (chat(model="x" * 300), "model"),
    "messages-missing": ({"model": "mock-small"}, "messages"),
    "messages-string": (chat(messages="hello"), "messages"),
    "messages-empty": (chat(messages=[]), "messages"),
    "message-string": (chat(messages=["hello"]), "messages[0]"),
    "role-missing": (chat(messages=[{"content": "hi"}]), "messages[0].role"),
    "role-unknown": (chat(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
    "role-list": (chat(messages=[{"role": ["user"], "content": "hi"}]), "messages[0].role"),
    "role-object": (chat(messages=[{"role": {"is": "user"}, "content": "hi"}]), "messages[0].role"),
    "content-number": (chat(messages=[*OK_MESSAGES, {"role": "user", "content": 5}]), "messages[1].content"),
    "content-part-string": (chat(messages=[{"role": "user", "content": ["hi"]}]), "messages[0].content"),
    "stream-string": (chat(stream="yes"), "stream"),
    "stream-number": (chat(stream=1), "stream"),
    "stream-options-without-stream": (chat(stream_options={"include_usage": True}), "stream_options"),
    "stream-options-list": (chat(stream=True, stream_options=[]), "stream_options"),
    "include-usage-number": (
        chat(stream=True, stream_options={"include_usage": 1}),
        "stream_options.include_usage",
    ),
    "temperature-high": (chat(temperature=2.5), "temperature"),
    "temperature-negative": (chat(temperature=-0.1), "temperature"),
    "temperature-string": (chat(temperature="1"), "temperature"),
    "temperature-bool": (chat(temperature=True), "temperature"),
    "top-p-high": (chat(top_p=1.5), "top_p"),
    "presence-penalty-low": (chat(presence_penalty=-3), "presence_penalty"),
    "frequency-penalty-high": (chat(frequency_penalty=2.01), "frequency_penalty"),
    "max-tokens-zero": (chat(max_tokens=0), "max_tokens"),
    "max-tokens-float": (chat(max_tokens=1.5), "max_tokens"),
    "max-completion-tokens-string": (chat(max_completion_tokens="9"), "max_completion_tokens"),
    "n-zero": (chat(n=0), "n"),
    "n-two-on-the-mock": (chat(n=2), "n"),  # the mock answers one choice only
}


@pytest.mark.parametrize(("body", "param"), CHAT_SCHEMA_ERRORS.values(), ids=CHAT_SCHEMA_ERRORS.keys())
async def test_chat_schema_errors_are_400_naming_the_param(http, body, param):
    response = await http.post(CHAT, json=body)
    assert_openai_error(response, 400, type_="invalid_request_error", param=param)
    if "stream" not in param and "stream" not in body:
        # The same error when streamed: nothing has been sent yet.
        assert_openai_error(await http.post(CHAT, json={**body, "stream": True}), 400, param=param)


EMBEDDING_SCHEMA_ERRORS = [
    ({"input": "hi"}, "model"),
    ({"model": "mock-small"}, "input"),
    ({"model": "mock-small", "input": ""}, "input"),
    ({"model": "mock-small", "input": []}, "input"),
    ({"model": "mock-small", "input": ["ok", ""]}, "input"),
    ({"model": "mock-small", "input": ["ok", 1]}, "input"),
    ({"model": "mock-small", "input": [[1, 2], []]}, "input"),
    ({"model": "mock-small", "input": [True]}, "input"),
    ({"model": "mock-small", "input": {"text": "hi"}}, "input"),
    ({"model": "mock-small", "input": "hi", "encoding_format": "hex"}, "encoding_format"),
    ({"model": "mock-small", "input": "hi", "dimensions": 0}, "dimensions"),
    ({"model": "mock-small", "input": "hi", "dimensions": "8"}, "dimensions"),
    ({"model": "mock-small", "input": "hi", "dimensions": 5000}, "dimensions"),  # over the mock's limit
]


@pytest.mark.parametrize(
    ("body", "param"),
    EMBEDDING_SCHEMA_ERRORS,
    ids=[f"{p}-{i}" for i, (_, p) in enumerate(EMBEDDING_SCHEMA_ERRORS)],
)
async def test_embedding_schema_errors_are_400_naming_the_param(http, body, param):
    assert_openai_error(
        await http.post(EMBEDDINGS, json=body), 400, type_="invalid_request_error", param=param
    )


NULLABLE_CHAT_FIELDS = [
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "n",
]


@pytest.mark.parametrize("field", NULLABLE_CHAT_FIELDS)
async def test_explicit_null_means_the_default_as_in_openai(http, field):
    """OpenAI's schema types these `T | null`; clients that serialise unset fields send null."""
    response = await http.post(CHAT, json={"model": "mock-small", "messages": OK_MESSAGES, field: None})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("field", ["encoding_format", "dimensions", "user"])
async def test_explicit_null_in_embeddings_means_the_default(http, field):
    response = await http.post(EMBEDDINGS, json={"model": "mock-small", "input": "hi", field: None})
    assert response.status_code == 200, response.text


ENDPOINTS = [("POST", CHAT), ("POST", EMBEDDINGS), ("GET", "/v1/models"), ("GET", "/v1/models/mock-small")]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_missing_key_is_401(gateway, method, path):
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        response = await anonymous.request(
            method, path, json={"model": "mock-small", "messages": OK_MESSAGES}
        )
    assert_openai_error(response, 401, type_="invalid_request_error", code="missing_api_key")


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    ("authorization", "secret"),
    [
        ("Bearer sk-wrong-key-0123456789abcdef", "sk-wrong-key-0123456789abcdef"),
        (f"Bearer {MASTER_KEY}x", MASTER_KEY),
        (f"Bearer {MASTER_KEY[:-1]}", MASTER_KEY[:-1]),
        (f"Basic {MASTER_KEY}", MASTER_KEY),
        ("Bearer", None),
        (MASTER_KEY, MASTER_KEY),
    ],
    ids=["other", "longer", "shorter", "basic", "empty", "no-scheme"],
)
async def test_wrong_key_is_401_and_never_echoed(gateway, method, path, authorization, secret):
    async with httpx.AsyncClient(base_url=gateway.url, headers={"authorization": authorization}) as wrong:
        response = await wrong.request(method, path, json={"model": "mock-small", "messages": OK_MESSAGES})
    assert_openai_error(response, 401, type_="invalid_request_error", code="invalid_api_key")
    if secret is not None:
        assert secret not in response.text + repr(response.headers.raw)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"model": "no-such-model", "messages": OK_MESSAGES}),
        (CHAT, {"model": "no-such-model", "messages": OK_MESSAGES, "stream": True}),
        (EMBEDDINGS, {"model": "no-such-model", "input": "hi"}),
    ],
    ids=["chat", "stream", "embeddings"],
)
async def test_unknown_model_is_404_model_not_found(http, path, body):
    error = assert_openai_error(
        await http.post(path, json=body),
        404,
        type_="invalid_request_error",
        code="model_not_found",
        param="model",
    )
    assert "no-such-model" in error["message"]


async def test_retrieving_an_unknown_model_is_404(http):
    assert_openai_error(await http.get("/v1/models/no-such-model"), 404, code="model_not_found")


def body_of_size(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    head = b'{"model":"mock-small","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_body_at_the_limit_is_accepted(http):
    response = await post_raw(http, CHAT, body_of_size(MAX_BODY_BYTES))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
async def test_body_over_the_limit_with_content_length_is_413(http, path):
    response = await post_raw(http, path, body_of_size(MAX_BODY_BYTES + 1))
    assert_openai_error(response, 413, type_="invalid_request_error", code="request_too_large")


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
async def test_body_over_the_limit_chunked_is_413(http, path):
    payload = body_of_size(MAX_BODY_BYTES * 4)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 500):
            yield payload[i : i + 500]

    response = await http.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413, code="request_too_large")


async def test_body_under_the_limit_chunked_is_accepted(http):
    payload = body_of_size(MAX_BODY_BYTES - 100)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 300):
            yield payload[i : i + 300]

    response = await http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nothing-here"),
        ("POST", "/v1/completions"),
        ("GET", "/"),
        ("POST", "/v2/chat/completions"),
    ],
)
async def test_unknown_route_is_404(http, method, path):
    assert_openai_error(
        await http.request(method, path), 404, type_="invalid_request_error", code="not_found"
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", CHAT),  # (GET lists stored completions)
        ("DELETE", CHAT),
        ("GET", EMBEDDINGS),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models/mock-small"),
    ],
)
async def test_wrong_method_is_405(http, method, path):
    response = await http.request(method, path)
    assert_openai_error(response, 405, type_="invalid_request_error", code="method_not_allowed")


async def test_405_names_the_allowed_methods(http):
    """RFC 9110 §15.5.6: a 405 response must carry an Allow header."""
    response = await http.put(CHAT)
    assert response.status_code == 405
    assert "POST" in response.headers.get("allow", "")


WRONG_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    1e308,
    -1e308,
    18446744073709551615,
    -9223372036854775808,
    "",
    "x",
    "\u0000\ud7ff",
    [],
    {},
    [None],
    {"a": None},
    [[[[[]]]]],
]
CHAT_FIELDS = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "seed",
]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]
EMBEDDING_FIELDS = ["model", "input", "encoding_format", "dimensions", "user"]


def nested(depth: int) -> Any:
    value: Any = []
    for i in range(depth - 1):
        value = [value] if i % 2 else {"k": value}
    return value


def malformed_requests(rng: random.Random) -> list[tuple[str, bytes]]:
    """Bodies no client should send; each paired with the endpoint it goes to."""
    out: list[tuple[str, bytes]] = []
    for _ in range(40):
        out.append((rng.choice([CHAT, EMBEDDINGS]), rng.randbytes(rng.randrange(0, 400))))
    for _ in range(20):  # valid JSON prefix, random tail
        out.append((CHAT, b'{"model":"mock-small","messages":[' + rng.randbytes(rng.randrange(1, 100))))
    chat = {"model": "mock-small", "messages": [{"role": "user", "content": "fuzz"}]}
    for field in CHAT_FIELDS:
        for value in WRONG_VALUES:
            out.append((CHAT, orjson.dumps({**chat, field: value})))
            out.append((CHAT, orjson.dumps({**chat, "stream": True, field: value})))
    for field in MESSAGE_FIELDS:
        for value in WRONG_VALUES:
            message = {"role": "user", "content": "fuzz", field: value}
            out.append((CHAT, orjson.dumps({**chat, "messages": [message]})))
    embed = {"model": "mock-small", "input": "fuzz"}
    for field in EMBEDDING_FIELDS:
        for value in WRONG_VALUES:
            out.append((EMBEDDINGS, orjson.dumps({**embed, field: value})))
    for depth in (10, 100, 254, 255, 300, 600, 1100):
        out.append((CHAT, orjson.dumps(nested(depth)) if depth <= 254 else b"[" * depth + b"]" * depth))
        deep = b"[" * depth + b"]" * depth
        out.append(
            (CHAT, b'{"model":"mock-small","messages":[{"role":"user","content":"x","extra":' + deep + b"}]}")
        )
        for model in (b"mock-small", b"up-chat"):
            head = b'{"model":"' + model + b'","messages":[{"role":"user","content":"x"}],"tools":'
            out.append((CHAT, head + deep + b"}"))
        out.append((EMBEDDINGS, b'{"model":"mock-small","input":' + deep + b"}"))
    for number in (b"1e308", b"-1e308", b"1e400", b"1e-400", b"18446744073709551616", b"-" + b"9" * 400):
        for field in (b"temperature", b"max_tokens", b"n", b"seed", b"top_p"):
            out.append(
                (
                    CHAT,
                    b'{"model":"mock-small","messages":[{"role":"user","content":"x"}],"'
                    + field
                    + b'":'
                    + number
                    + b"}",
                )
            )
        out.append((EMBEDDINGS, b'{"model":"mock-small","input":"x","dimensions":' + number + b"}"))
    return [(path, body) for path, body in out if len(body) <= MAX_BODY_BYTES]


async def test_malformed_bodies_never_cause_a_server_error(http):
    rng = random.Random(20261129)
    failures = []
    requests = malformed_requests(rng)
    for path, content in requests:
        try:
            response = await post_raw(http, path, content)
        except httpx.TransportError:
            # After an unhandled error the server closes the kept-alive connection
            # without saying so; the next request on it fails. Try that one again.
            try:
                response = await post_raw(http, path, content)
            except httpx.TransportError as exc:
                failures.append((path, content, type(exc).__name__, ""))
                continue
        if response.status_code >= 500:
            failures.append((path, content, response.status_code, response.text[:200]))
        elif response.status_code >= 400:
            assert_openai_error(response, response.status_code)
    assert (await http.get("/healthz")).status_code == 200
    report = "\n".join(
        f"{status} {path} {content[:100]!r}... ({len(content)} bytes) {text}"
        for path, content, status, text in failures
    )
    assert not failures, f"{len(failures)} of {len(requests)} bodies got a server error:\n{report}"


async def test_deep_nesting_inside_a_message_is_not_a_server_error(http):
    """JSON the parser accepts (depth 300 < its 1024 limit) but orjson cannot
    serialise again (depth > 254): the mock hashes the messages with orjson."""
    deep = b"[" * 300 + b"]" * 300
    content = b'{"model":"mock-small","messages":[{"role":"user","content":"x","extra":' + deep + b"}]}"
    response = await post_raw(http, CHAT, content)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)


async def test_deep_nesting_in_a_passthrough_field_is_not_a_server_error(http):
    """The OpenAI adapter re-serialises the body with orjson (depth limit 254)."""
    deep = b"[" * 300 + b"]" * 300
    content = b'{"model":"up-chat","messages":[{"role":"user","content":"x"}],"tools":' + deep + b"}"
    response = await post_raw(http, CHAT, content)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)
