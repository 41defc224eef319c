"""The built-in mock: an in-process OpenAI-format "server" behind the OpenAI adapter."""

import array
import base64
import math

import orjson

from services.router.providers.base import HttpResponse
from services.router.providers.mock import MockAdapter, MockTransport, embedding, reply_tokens
from services.router.providers.tokens import count_messages, count_text
from tests.unit.deployments import MOCK

MSG = [{"role": "user", "content": "Tell me, briefly, about gateways."}]
ADAPTER = MockAdapter()
SERVER = MockTransport({MOCK.name: (MOCK.config.mock, MOCK.model)})  # type: ignore[union-attr]


def test_tokenizer_counts_words_and_punctuation():
    assert count_text("Tell me, briefly.") == 5
    assert count_messages(MSG) == 3 + count_text(MSG[0]["content"]) + 3


def test_reply_is_deterministic_and_respects_the_limit():
    assert reply_tokens(MSG, 32) == reply_tokens(MSG, 32)
    assert reply_tokens(MSG, 32) != reply_tokens([{"role": "user", "content": "other"}], 32)
    assert len(reply_tokens(MSG, 3)) == 3


def test_requests_go_to_the_in_process_server_without_credentials():
    request = ADAPTER.chat_request(MOCK, {"model": "mock-small", "messages": MSG}, stream=False)
    assert request.url == "mock://mock-small/0/chat/completions"
    assert "authorization" not in request.headers
    assert orjson.loads(request.body)["model"] == "mock-upstream"


async def test_chat_reports_honest_usage():
    request = ADAPTER.chat_request(MOCK, {"model": "m", "messages": MSG, "max_tokens": 5}, stream=False)
    completion = ADAPTER.chat_response(MOCK, await SERVER.send(request))
    body = orjson.loads(completion.body)
    assert body["object"] == "chat.completion"
    assert body["model"] == "mock-upstream"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5 == completion.usage.completion_tokens
    assert body["usage"]["prompt_tokens"] == count_messages(MSG)
    assert body["choices"][0]["message"]["content"] == "".join(reply_tokens(MSG, 5))


async def test_stream_decodes_to_the_same_text_and_usage():
    request = ADAPTER.chat_request(MOCK, {"model": "m", "messages": MSG, "stream": True}, stream=True)
    stream = await SERVER.open(request)
    assert stream.headers["content-type"].startswith(ADAPTER.stream_media_type)
    decoder = ADAPTER.chat_stream(MOCK)
    chunks = []
    async for data in stream.chunks():
        chunks += decoder.feed(data)
    chunks += decoder.finish()
    assert decoder.done
    assert decoder.error is None
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(reply_tokens(MSG, 32))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == []
    assert decoder.usage is not None
    assert decoder.usage.completion_tokens == len(reply_tokens(MSG, 32))


async def test_n_above_one_is_a_400_naming_the_parameter():
    request = ADAPTER.chat_request(MOCK, {"model": "m", "messages": MSG, "n": 2}, stream=False)
    response = await SERVER.send(request)
    err = ADAPTER.error(MOCK, response)
    assert (response.status, err.status, err.param) == (400, 400, "n")


async def test_embeddings_float_and_base64_agree():
    body = {"model": "m", "input": ["a", "b"], "dimensions": 16}

    async def embed(extra: dict) -> dict:
        response: HttpResponse = await SERVER.send(ADAPTER.embeddings_request(MOCK, {**body, **extra}))  # type: ignore[arg-type]
        return orjson.loads(ADAPTER.embeddings_response(MOCK, response).body)

    plain, packed = await embed({}), await embed({"encoding_format": "base64"})
    vec = plain["data"][0]["embedding"]
    assert len(vec) == 16
    assert math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-9)
    decoded = array.array("f", base64.b64decode(packed["data"][0]["embedding"]))
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(decoded, vec, strict=True))
    assert embedding("a", 16) == vec
