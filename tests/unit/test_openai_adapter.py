"""The OpenAI-compatible adapter is pure translation: tested on recorded payloads, no network."""

from types import SimpleNamespace

import orjson
import pytest
from multidict import CIMultiDict

from services.kernel.errors import InvalidRequest, RateLimited, UpstreamError
from services.router.dialect import OpenAIStreamWriter
from services.router.messages import MessagesStreamWriter
from services.router.providers.base import HttpResponse
from services.router.providers.openai import OpenAIAdapter
from services.router.relay import ChatAssembler, Relay
from tests.unit.deployments import OPENAI

ADAPTER = OpenAIAdapter()
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    },
    "service_tier": "default",
}
SSE = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":""},"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},'
    b'"finish_reason":null}],"usage":null}\n\n'
    b": keep-alive comment\r\n\r\n"
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
    b"data: [DONE]\n\n"
)


def response(status: int, *, json=None, content: bytes = b"", headers=None) -> HttpResponse:
    body = orjson.dumps(json) if json is not None else content
    return HttpResponse(status, CIMultiDict(headers or {"content-type": "application/json"}), body)


def decode(data: bytes, piece: int):
    decoder = ADAPTER.chat_stream(OPENAI)
    chunks = []
    for i in range(0, len(data), piece):
        chunks += decoder.feed(data[i : i + piece])
    chunks += decoder.finish()
    return decoder, chunks


def test_chat_request_passes_the_body_through_with_the_upstream_model_and_key():
    body = {"model": "public", "messages": [], "tools": [{"type": "function"}], "seed": 1, "x": {"y": 2}}
    request = ADAPTER.chat_request(OPENAI, body, stream=False)  # type: ignore[arg-type]
    assert request.url == "https://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-provider-secret"
    assert orjson.loads(request.body) == {**body, "model": "gpt-4o-mini-2024-07-18"}
    t = request.timeouts
    assert (t.connect, t.first_byte, t.total, t.idle) == (5.0, 60.0, 600.0, 60.0)


def test_stream_request_always_asks_for_usage():
    body = {"model": "public", "messages": [], "stream": True, "stream_options": {"include_usage": False}}
    request = ADAPTER.chat_request(OPENAI, body, stream=True)  # type: ignore[arg-type]
    assert orjson.loads(request.body)["stream_options"] == {"include_usage": True}


def test_response_is_untouched_and_usage_is_read_with_its_details():
    completion = ADAPTER.chat_response(OPENAI, response(200, json=COMPLETION))
    assert orjson.loads(completion.body) == COMPLETION  # unknown fields included
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens) == (
        9,
        3,
        4,
        2,
    )
    assert not usage.estimated


@pytest.mark.parametrize("piece", [1, 7, 37, 10_000])
def test_stream_decodes_whatever_the_piece_size(piece):
    decoder, chunks = decode(SSE, piece)
    assert decoder.done
    assert decoder.error is None
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:2]] == ["", "Hi"]
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert decoder.usage is not None
    assert (decoder.usage.prompt_tokens, decoder.usage.completion_tokens) == (9, 2)


@pytest.mark.parametrize("include_usage", [True, False])
def test_unchanged_chunks_reach_the_client_as_the_upstream_wrote_them(include_usage):
    """No second serialisation: an OpenAI chunk goes out byte for byte, spacing included;
    a chunk the gateway changes (usage the client did not ask for) is written anew."""
    spaced = b'{"id": "c", "object": "chat.completion.chunk", "choices": [{"delta": {"content": "a"}}]}'
    with_usage = (
        b'{"id":"c","choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":9,"completion_tokens":2}}'
    )
    usage_only = b'{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}'
    two_lines = b'data: {"id": "c",\ndata:  "choices": []}'
    decoder = ADAPTER.chat_stream(OPENAI)
    stream = b"".join(b"data: " + d + b"\n\n" for d in (spaced, with_usage, usage_only)) + two_lines + b"\n\n"
    chunks = decoder.feed(stream)
    assert len(chunks) == 4
    assert len(decoder.raw) == 3
    written = OpenAIStreamWriter(include_usage).chunks(chunks, decoder.raw)
    frames = [orjson.loads(f.removeprefix(b"data: ")) for f in written.split(b"\n\n") if f]
    assert written.startswith(b"data: " + spaced + b"\n\n")
    if include_usage:
        assert b"data: " + with_usage + b"\n\n" in written
        assert b"data: " + usage_only + b"\n\n" in written
        assert [f["usage"]["prompt_tokens"] for f in frames[1:3]] == [9, 9]
    else:
        assert b"usage" not in written
        assert len(frames) == 3
    assert frames[-1] == {"id": "c", "choices": []}  # written anew, on one line
    assert decoder.raw == {}  # what was written was taken out


def test_a_stream_cut_short_is_not_done():
    decoder, chunks = decode(SSE[: SSE.index(b"data: [DONE]")], 50)
    assert not decoder.done
    assert len(chunks) == 4


def test_an_error_event_in_the_stream_is_reported():
    data = SSE[:200] + b'\n\ndata: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    decoder, _ = decode(data, 64)
    assert isinstance(decoder.error, UpstreamError)
    assert "overloaded" in decoder.error.message


def test_out_of_range_usage_is_ignored():
    bad = {**COMPLETION, "usage": {"prompt_tokens": 2**40, "completion_tokens": 1, "total_tokens": 1}}
    assert ADAPTER.chat_response(OPENAI, response(200, json=bad)).usage.prompt_tokens == 0


def error(status: int, message: str = "boom", headers: dict | None = None, **fields) -> HttpResponse:
    body = {"error": {"message": message, "type": "x", "param": None, "code": None, **fields}}
    return response(status, json=body, headers={"content-type": "application/json", **(headers or {})})


@pytest.mark.parametrize(
    ("upstream", "kind", "status", "code"),
    [
        (error(400, "bad temperature", param="temperature"), InvalidRequest, 400, "invalid_request"),
        (error(422), InvalidRequest, 400, "invalid_request"),
        (
            error(400, "too long", code="context_length_exceeded"),
            InvalidRequest,
            400,
            "context_length_exceeded",
        ),
        (
            error(401, "Incorrect API key provided: sk-pro****cret"),
            UpstreamError,
            502,
            "upstream_auth_failed",
        ),
        (error(429, headers={"retry-after": "7"}), RateLimited, 429, "rate_limit_exceeded"),
        (error(500), UpstreamError, 502, "upstream_error"),
        (error(503), UpstreamError, 502, "upstream_error"),
        (response(307, headers={"location": "http://elsewhere.test/"}), UpstreamError, 502, "upstream_error"),
    ],
)
def test_upstream_statuses_map_to_client_statuses(upstream, kind, status, code):
    err = ADAPTER.error(OPENAI, upstream)
    assert isinstance(err, kind)
    assert (err.status, err.code) == (status, code)
    assert "sk-pro" not in err.message


def test_auth_failure_names_the_variable_and_tells_clients_not_to_retry():
    err = ADAPTER.error(OPENAI, error(401))
    assert "TEST_PROVIDER_KEY" in err.message
    assert err.headers == {"x-should-retry": "false"}
    assert not err.retryable


def test_rate_limit_keeps_retry_after_and_is_retryable():
    err = ADAPTER.error(OPENAI, error(429, headers={"retry-after": "7"}))
    assert err.headers == {"retry-after": "7"}
    assert err.retryable


def test_the_param_of_a_400_is_kept():
    assert ADAPTER.error(OPENAI, error(400, param="temperature")).param == "temperature"


def test_an_html_error_page_is_summarised_not_pasted():
    page = b"<html><body>" + b"Not Found " * 500 + b"</body></html>"
    err = ADAPTER.error(OPENAI, response(404, content=page, headers={"content-type": "text/html"}))
    assert "<html>" not in err.message
    assert f"a text/html body of {len(page)} bytes" in err.message


def test_a_redirect_is_reported_not_followed():
    err = ADAPTER.error(OPENAI, response(307, headers={"location": "http://elsewhere.test/"}))
    assert "redirect" in err.message
    assert "elsewhere" not in err.message


def test_non_json_success_is_an_upstream_error():
    with pytest.raises(UpstreamError):
        ADAPTER.chat_response(OPENAI, response(200, content=b"<html>", headers={"content-type": "text/html"}))


def test_chunks_a_writer_does_not_send_as_received_are_not_kept():
    """The Messages dialect rewrites every chunk: the bytes kept for the OpenAI writer are
    dropped after each read, so a long stream does not hold them all until it ends."""
    decoder = ADAPTER.chat_stream(OPENAI)
    frame = (
        b'data: {"id":"c","object":"chat.completion.chunk",'
        b'"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    )
    exchange = SimpleNamespace(first_byte_at=None)
    writer = MessagesStreamWriter()
    for _ in range(3):
        chunks = decoder.feed(frame * 4)
        out = Relay._frames(exchange, chunks, ChatAssembler(), writer, decoder.raw)  # type: ignore[arg-type]
        assert b"content_block_delta" in out
        assert decoder.raw == {}
