"""`store: true` and OpenAI's stored-completion endpoints, through the official client
(what openai-python's own tests under tests/api_resources/chat/ call), against the
embedded gateway: the router serves the paths, analytics keeps and reads them."""

from __future__ import annotations

import asyncio
import time
import uuid

import openai
import pytest

from tests.e2e.conftest import assert_openai_error, user

DEADLINE_S = 20.0


async def created(client, tag: str, n: int, **extra) -> list[str]:
    """n stored completions tagged with metadata {"tag": tag}; their ids, oldest first."""
    ids = []
    for i in range(n):
        reply = await client.chat.completions.create(
            model="mock-small",
            messages=[{"role": "system", "content": "be brief"}, *user(f"{tag} {i}")],
            store=True,
            metadata={"tag": tag, "i": str(i)},
            temperature=0.5,
            **extra,
        )
        ids.append(reply.id)
        await asyncio.sleep(0.002)
    return ids


async def until_listed(client, tag: str, n: int) -> list:
    """The stored completions tagged `tag`, once all n have been handed over (a settle
    follow-up: they arrive just after the answer)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        page = await client.chat.completions.list(metadata={"tag": tag}, limit=100)
        if len(page.data) >= n or time.monotonic() > deadline:
            return page.data
        await asyncio.sleep(0.02)


async def test_store_list_retrieve_update_messages_delete(client):
    tag = uuid.uuid4().hex[:12]
    ids = await created(client, tag, 3)
    listed = await until_listed(client, tag, 3)
    assert [c.id for c in listed] == ids  # oldest first by default
    assert all(c.metadata["tag"] == tag for c in listed)

    one = await client.chat.completions.retrieve(ids[1])
    assert one.id == ids[1]
    assert one.model == "mock-small"
    assert one.choices[0].message.content
    assert one.metadata == {"tag": tag, "i": "1"}
    assert one.model_extra["temperature"] == 0.5

    updated = await client.chat.completions.update(ids[1], metadata={"tag": tag, "reviewed": "yes"})
    assert updated.metadata == {"tag": tag, "reviewed": "yes"}
    reviewed = await client.chat.completions.list(metadata={"reviewed": "yes", "tag": tag})
    assert [c.id for c in reviewed.data] == [ids[1]]

    messages = await client.chat.completions.messages.list(ids[0])
    assert [(m.role, m.content) for m in messages.data] == [("system", "be brief"), ("user", f"{tag} 0")]
    assert all(m.id for m in messages.data)
    newest_first = await client.chat.completions.messages.list(ids[0], order="desc", limit=1)
    assert [m.content for m in newest_first.data] == [f"{tag} 0"]
    assert newest_first.has_more

    deleted = await client.chat.completions.delete(ids[2])
    assert (deleted.id, deleted.deleted, deleted.object) == (ids[2], True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.retrieve(ids[2])
    left = await client.chat.completions.list(metadata={"tag": tag})
    assert [c.id for c in left.data] == ids[:2]


async def test_list_pages_with_after_limit_and_order(client):
    tag = uuid.uuid4().hex[:12]
    ids = await created(client, tag, 5)
    await until_listed(client, tag, 5)
    first = await client.chat.completions.list(metadata={"tag": tag}, limit=2)
    assert [c.id for c in first.data] == ids[:2]
    assert first.has_more
    rest = [c.id async for c in client.chat.completions.list(metadata={"tag": tag}, limit=2)]
    assert rest == ids  # the SDK's auto-pagination follows `after`
    backwards = await client.chat.completions.list(metadata={"tag": tag}, order="desc", limit=3)
    assert [c.id for c in backwards.data] == ids[::-1][:3]
    after = await client.chat.completions.list(metadata={"tag": tag}, after=ids[2])
    assert [c.id for c in after.data] == ids[3:]
    by_model = await client.chat.completions.list(metadata={"tag": tag}, model="nope")
    assert by_model.data == []


async def test_streamed_answers_are_stored_too(client):
    tag = uuid.uuid4().hex[:12]
    stream = await client.chat.completions.create(
        model="mock-small", messages=user(tag), store=True, metadata={"tag": tag}, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    [kept] = await until_listed(client, tag, 1)
    assert kept.choices[0].message.content == text


async def test_without_store_nothing_is_kept(client):
    tag = uuid.uuid4().hex[:12]
    await client.chat.completions.create(model="mock-small", messages=user(tag), metadata={"tag": tag})
    marker = uuid.uuid4().hex[:12]
    await created(client, marker, 1)  # handed over after the first: once it is there, so would be the first
    await until_listed(client, marker, 1)
    assert (await client.chat.completions.list(metadata={"tag": tag})).data == []


async def test_unknown_ids_and_bad_parameters_are_clean_errors(http):
    assert_openai_error(await http.get("/v1/chat/completions/chatcmpl-nothing"), 404)
    assert_openai_error(await http.delete("/v1/chat/completions/chatcmpl-nothing"), 404)
    assert_openai_error(await http.get("/v1/chat/completions/chatcmpl-nothing/messages"), 404)
    assert_openai_error(await http.get("/v1/chat/completions/.."), 404)
    assert_openai_error(await http.get("/v1/chat/completions", params={"limit": "0"}), 400, param="limit")
    assert_openai_error(await http.get("/v1/chat/completions", params={"order": "up"}), 400, param="order")
    assert_openai_error(await http.get("/v1/chat/completions", params={"metadata": "x"}), 400)
    assert_openai_error(await http.put("/v1/chat/completions/chatcmpl-x"), 405)
    response = await http.post("/v1/chat/completions/chatcmpl-x", json={"metadata": {"k": 5}})
    assert_openai_error(response, 400, param="metadata")
    response = await http.post("/v1/chat/completions/chatcmpl-x", content=b"{" * 70_000)
    assert_openai_error(response, 413)
    unauthenticated = await http.get("/v1/chat/completions", headers={"authorization": "Bearer wrong"})
    assert_openai_error(unauthenticated, 401)
