"""The OpenAI-compatible adapter against recorded payloads, through a fake Upstream."""

import dataclasses

import orjson
import pytest

from services.kernel.errors import InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from services.router.providers.openai import OpenAIProvider
from services.router.upstream import ConnectFailed, ReadTimedOut, Timeouts, UpstreamResponse
from tests.unit.test_mock_provider import DEP as MOCK_DEP

DEP = dataclasses.replace(
    MOCK_DEP,
    provider="openai",
    model="gpt-4o-mini-2024-07-18",
    base_url="https://upstream.test/v1",
    api_key="sk-provider-secret",
    api_key_env="TEST_PROVIDER_KEY",
)
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    "service_tier": "default",
}
SSE = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":""},"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},'
    b'"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
    b"data: [DONE]\n\n"
)


class Request:
    def __init__(self, url: str, headers, content: bytes) -> None:
        self.url, self.headers, self.content = url, dict(headers), content


class Response:
    def __init__(self, status: int, *, json=None, content: bytes = b"", headers=None) -> None:
        self.status = status
        self.content = orjson.dumps(json) if json is not None else content
        self.headers = headers or {}


class Recorded:
    """An Upstream that answers from a handler; streams arrive in small uneven pieces."""

    def __init__(self, handler) -> None:
        self.handler = handler

    async def post(self, url, *, content, headers, timeouts: Timeouts):
        response = self.handler(Request(url, headers, content))
        return UpstreamResponse(response.status, response.headers, response.content)

    async def open_stream(self, url, *, content, headers, timeouts: Timeouts):
        response = self.handler(Request(url, headers, content))
        return RecordedStream(response)


class RecordedStream:
    def __init__(self, response: Response) -> None:
        self.status, self.headers, self.content = response.status, response.headers, response.content

    async def chunks(self):
        for i in range(0, len(self.content), 37):
            yield self.content[i : i + 37]

    async def read(self):
        return self.content

    async def aclose(self):
        return None


def client(handler) -> "RecordedClient":
    return RecordedClient(handler)


class RecordedClient:
    def __init__(self, handler) -> None:
        self.upstream = Recorded(handler)

    async def __aenter__(self) -> Recorded:
        return self.upstream

    async def __aexit__(self, *exc) -> None:
        return None


async def test_chat_passes_the_body_through_and_reads_usage():
    seen = {}

    def handler(request: Request) -> Response:
        seen["url"] = str(request.url)
        seen["auth"] = request.headers["authorization"]
        seen["body"] = orjson.loads(request.content)
        return Response(200, json=COMPLETION)

    body = {"model": "public", "messages": [], "tools": [{"type": "function"}], "seed": 1, "x": {"y": 2}}
    async with client(handler) as http:
        completion = await OpenAIProvider().chat(DEP, body, http=http)
    assert seen["url"] == "https://upstream.test/v1/chat/completions"
    assert seen["auth"] == "Bearer sk-provider-secret"
    assert seen["body"] == {**body, "model": "gpt-4o-mini-2024-07-18"}
    assert orjson.loads(completion.body) == COMPLETION  # untouched, unknown fields included
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (9, 3)


async def test_stream_asks_for_usage_and_hides_it_when_not_requested():
    seen = {}

    def handler(request: Request) -> Response:
        seen["body"] = orjson.loads(request.content)
        return Response(200, content=SSE, headers={"content-type": "text/event-stream"})

    async with client(handler) as http:
        stream = await OpenAIProvider().chat_stream(
            DEP, {"messages": [], "stream": True}, http=http, include_usage=False
        )
        out = b"".join([f async for f in stream.frames()])
        await stream.aclose()
    assert seen["body"]["stream_options"] == {"include_usage": True}
    assert b'"usage":{' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (9, 2)
    assert stream.first_chunk_at is not None


async def test_stream_keeps_usage_when_requested():
    sse = {"content-type": "text/event-stream; charset=utf-8"}
    async with client(lambda r: Response(200, content=SSE, headers=sse)) as http:
        stream = await OpenAIProvider().chat_stream(
            DEP,
            {"messages": [], "stream": True, "stream_options": {"include_usage": True}},
            http=http,
            include_usage=True,
        )
        out = b"".join([f async for f in stream.frames()])
    assert out == SSE


def error(status: int, message: str = "boom", headers: dict | None = None):
    body = {"error": {"message": message, "type": "x", "param": None, "code": None}}
    return lambda request: Response(status, json=body, headers=headers or {})


@pytest.mark.parametrize(
    ("handler", "kind", "status"),
    [
        (error(400, "bad temperature"), InvalidRequest, 400),
        (error(422), InvalidRequest, 400),
        (error(401, "Incorrect API key provided: sk-pro****cret"), UpstreamError, 502),
        (error(429, headers={"retry-after": "7"}), RateLimited, 429),
        (error(500), UpstreamError, 502),
        (error(503), UpstreamError, 502),
        (lambda r: Response(200, content=b"<html>"), UpstreamError, 502),
    ],
)
async def test_upstream_statuses_map_to_client_statuses(handler, kind, status):
    async with client(handler) as http:
        with pytest.raises(kind) as err:
            await OpenAIProvider().chat(DEP, {"messages": []}, http=http)
    assert err.value.status == status
    assert "sk-pro" not in err.value.message
    assert "sk-provider-secret" not in err.value.message


async def test_rate_limit_keeps_retry_after_and_is_retryable():
    async with client(error(429, headers={"retry-after": "7"})) as http:
        with pytest.raises(RateLimited) as err:
            await OpenAIProvider().chat(DEP, {"messages": []}, http=http)
    assert err.value.headers == {"retry-after": "7"}
    assert err.value.retryable


async def test_transport_failures():
    def refuse(request):
        raise ConnectFailed("refused")

    def slow(request):
        raise ReadTimedOut("slow")

    async with client(refuse) as http:
        with pytest.raises(UpstreamError) as err:
            await OpenAIProvider().chat(DEP, {"messages": []}, http=http)
    assert err.value.retryable
    async with client(slow) as http:
        with pytest.raises(UpstreamTimeout) as timeout:
            await OpenAIProvider().chat(DEP, {"messages": []}, http=http)
    assert timeout.value.status == 504
    assert not timeout.value.retryable
