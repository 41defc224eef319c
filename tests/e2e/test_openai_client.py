"""The gateway as the official openai client sees it: the built-in mock and the models list."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk

from tests.e2e.conftest import UPSTREAM_MODELS, user
from tests.upstream import embedding


async def stream_chunks(client: AsyncOpenAI, **kwargs: Any) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(stream=True, **kwargs)
    async with stream:
        return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_chat_answers_with_text_and_consistent_usage(client):
    completion = await client.chat.completions.create(
        model="mock-small", messages=user("Tell me about gateways.")
    )
    assert completion.object == "chat.completion"
    assert completion.id
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    # The mock's tokens are whole words: one per word of the answer.
    assert usage.completion_tokens == len(choice.message.content.split())
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_equal_requests_get_equal_answers(client):
    messages = user("Is the mock deterministic?")
    first = await client.chat.completions.create(model="mock-small", messages=messages)
    second = await client.chat.completions.create(model="mock-small", messages=messages)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage == second.usage
    assert first.id != second.id


async def test_stream_concatenates_to_the_plain_answer(client):
    messages = user("Stream the same answer, please.")
    plain = await client.chat.completions.create(model="mock-small", messages=messages)
    chunks = await stream_chunks(client, model="mock-small", messages=messages)

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert text_of(chunks) == plain.choices[0].message.content
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert with_choices[0].choices[0].delta.role == "assistant"
    # Not asked for: no usage chunk, no usage anywhere.
    assert len(with_choices) == len(chunks)
    assert all(c.usage is None for c in chunks)
    # One content chunk per token.
    assert plain.usage is not None
    assert sum(1 for c in with_choices if c.choices[0].delta.content) == plain.usage.completion_tokens


async def test_stream_with_include_usage_ends_with_a_usage_chunk(client):
    messages = user("Count my tokens while streaming.")
    plain = await client.chat.completions.create(model="mock-small", messages=messages)
    chunks = await stream_chunks(
        client, model="mock-small", messages=messages, stream_options={"include_usage": True}
    )

    *content, last = chunks
    assert last.choices == []
    assert last.usage == plain.usage
    assert all(c.usage is None for c in content)
    assert content[-1].choices[0].finish_reason == "stop"
    assert text_of(content) == plain.choices[0].message.content


async def test_max_tokens_truncates_with_finish_reason_length(client):
    messages = user("A long answer, cut short.")
    plain = await client.chat.completions.create(model="mock-small", messages=messages, max_tokens=3)
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage is not None
    assert plain.usage.completion_tokens == 3
    chunks = await stream_chunks(
        client, model="mock-small", messages=messages, max_tokens=3, stream_options={"include_usage": True}
    )
    assert text_of(chunks) == plain.choices[0].message.content
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage == plain.usage


async def test_models_list_has_the_configured_models_and_not_the_keyless_one(client):
    ids = [m.id async for m in client.models.list()]
    assert len(ids) == len(set(ids))
    expected = {"mock-small", "mock-usage", "up-keyless", "up-slow", "up-closed", "up-fallback"}
    assert expected | set(UPSTREAM_MODELS) == set(ids)
    assert "up-no-key" not in ids

    card = await client.models.retrieve("mock-small")
    assert (card.id, card.object, card.owned_by) == ("mock-small", "model", "mock")
    assert (await client.models.retrieve("up-chat")).owned_by == "openai"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("up-no-key")


async def test_model_without_its_key_cannot_be_called(client):
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="up-no-key", messages=user("hi"))
    assert caught.value.code == "model_not_found"


def assert_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    # base64 carries float32: agree to float32 precision.
    assert all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6) for x, y in zip(a, b, strict=True))


async def test_mock_embeddings_float_and_default_base64_agree(client):
    texts = ["first text", "second text"]
    as_float = await client.embeddings.create(model="mock-small", input=texts, encoding_format="float")
    as_default = await client.embeddings.create(model="mock-small", input=texts)  # the client asks base64

    assert as_float.object == "list"
    assert [d.index for d in as_float.data] == [0, 1]
    for f, b in zip(as_float.data, as_default.data, strict=True):
        assert_close(f.embedding, b.embedding)
        assert math.isclose(math.sqrt(sum(v * v for v in f.embedding)), 1.0, rel_tol=1e-6)
    assert as_float.data[0].embedding != as_float.data[1].embedding
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == 4

    sized = await client.embeddings.create(model="mock-small", input="one", dimensions=16)
    assert len(sized.data[0].embedding) == 16


async def test_upstream_embeddings_float_and_default_base64(client, upstream):
    texts = ["hello world", "bye"]
    as_float = await client.embeddings.create(
        model="up-embed", input=texts, encoding_format="float", dimensions=12
    )
    as_default = await client.embeddings.create(model="up-embed", input=texts, dimensions=12)

    for i, text in enumerate(texts):
        assert as_float.data[i].embedding == embedding(text, 12)
        assert as_default.data[i].embedding == embedding(text, 12)  # exact in float32
    assert as_float.model == "upstream-embed-v1"
    assert as_float.usage.prompt_tokens == 3
    sent = upstream.requests_for("upstream-embed-v1")[-2:]
    assert [r.body["encoding_format"] for r in sent] == ["float", "base64"]
    assert all(r.body["input"] == texts and r.body["dimensions"] == 12 for r in sent)
