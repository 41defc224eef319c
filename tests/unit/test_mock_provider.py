import array
import base64
import math

import orjson
import pytest

from services.kernel.config import Deployment, MockParams
from services.kernel.errors import InvalidRequest
from services.router.providers.mock import MockProvider, embedding, reply_tokens
from services.router.providers.sse import data_of
from services.router.providers.tokens import count_messages, count_text

DEP = Deployment(
    public_model="mock-small",
    provider="mock",
    model="mock-upstream",
    base_url=None,
    api_key=None,
    api_key_env=None,
    weight=1.0,
    timeout_s=10.0,
    connect_timeout_s=1.0,
    mock=MockParams(max_tokens=32),
)
MSG = [{"role": "user", "content": "Tell me, briefly, about gateways."}]


def test_tokenizer_counts_words_and_punctuation():
    assert count_text("Tell me, briefly.") == 5
    assert count_messages(MSG) == 3 + count_text(MSG[0]["content"]) + 3


def test_reply_is_deterministic_and_respects_the_limit():
    assert reply_tokens(MSG, 32) == reply_tokens(MSG, 32)
    assert reply_tokens(MSG, 32) != reply_tokens([{"role": "user", "content": "other"}], 32)
    assert len(reply_tokens(MSG, 3)) == 3


async def test_chat_reports_honest_usage():
    completion = await MockProvider().chat(DEP, {"messages": MSG, "max_tokens": 5}, http=None)  # type: ignore[arg-type]
    body = orjson.loads(completion.body)
    assert body["object"] == "chat.completion"
    assert body["model"] == "mock-upstream"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5 == completion.usage.completion_tokens
    assert body["usage"]["prompt_tokens"] == count_messages(MSG)
    assert body["choices"][0]["message"]["content"] == "".join(reply_tokens(MSG, 5))


async def test_stream_carries_the_same_text_and_usage_when_asked():
    stream = await MockProvider().chat_stream(DEP, {"messages": MSG}, http=None, include_usage=True)  # type: ignore[arg-type]
    frames = [f async for f in stream.frames()]
    assert frames[-1] == b"data: [DONE]\n\n"
    chunks = [orjson.loads(data_of(f.strip())) for f in frames[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(reply_tokens(MSG, 32))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == []
    assert (
        chunks[-1]["usage"]["completion_tokens"]
        == stream.usage.completion_tokens
        == len(reply_tokens(MSG, 32))
    )
    assert stream.first_chunk_at is not None


async def test_stream_without_usage_has_no_usage_chunk():
    stream = await MockProvider().chat_stream(DEP, {"messages": MSG}, http=None, include_usage=False)  # type: ignore[arg-type]
    frames = [f async for f in stream.frames()]
    assert not any(b'"usage"' in f for f in frames)
    assert stream.usage.completion_tokens > 0


async def test_n_above_one_is_refused_by_name():
    with pytest.raises(InvalidRequest) as err:
        await MockProvider().chat(DEP, {"messages": MSG, "n": 2}, http=None)  # type: ignore[arg-type]
    assert err.value.param == "n"


async def test_embeddings_float_and_base64_agree():
    body = {"input": ["a", "b"], "dimensions": 16}
    plain = orjson.loads((await MockProvider().embeddings(DEP, body, http=None)).body)  # type: ignore[arg-type]
    packed = orjson.loads(
        (await MockProvider().embeddings(DEP, {**body, "encoding_format": "base64"}, http=None)).body  # type: ignore[arg-type]
    )
    vec = plain["data"][0]["embedding"]
    assert len(vec) == 16
    assert math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-9)
    decoded = array.array("f", base64.b64decode(packed["data"][0]["embedding"]))
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(decoded, vec, strict=True))
    assert embedding("a", 16) == vec
