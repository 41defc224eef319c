"""Namespaces and exact keys: what must and must not share a cache entry (pure logic)."""

from services.cache.keys import request_key


def key(body, tenant="team:a", model="m", limit=1000):
    return request_key(tenant, model, body, semantic_max_chars=limit)


def chat(prompt, *, system=None, **params):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return {"model": "m", "messages": messages, **params}


def test_tenants_and_models_never_share_a_namespace():
    body = chat("What is a gateway?")
    assert key(body).namespace != key(body, tenant="team:b").namespace
    assert key(body).namespace != key(body, model="other").namespace
    assert key(body).exact != key(body, tenant="team:b").exact


def test_system_prompt_and_answer_changing_parameters_split_the_namespace():
    base = key(chat("Hi", system="Be brief."))
    assert base.namespace != key(chat("Hi", system="Be verbose.")).namespace
    for params in (
        {"temperature": 0.5},
        {"max_tokens": 10},
        {"tools": [{"type": "function"}]},
        {"seed": 1},
        {"response_format": {"type": "json_object"}},
        {"some_future_field": True},
    ):
        assert key(chat("Hi", system="Be brief.", **params)).namespace != base.namespace, params


def test_delivery_fields_do_not_change_the_key():
    base = key(chat("Hi"))
    same = key(
        chat("Hi", stream=True, stream_options={"include_usage": True}, user="u1", metadata={"a": "b"})
    )
    assert (same.namespace, same.exact) == (base.namespace, base.exact)


def test_the_prompt_changes_the_exact_key_only():
    a, b = key(chat("What is Redis?")), key(chat("What's Redis?"))
    assert a.namespace == b.namespace
    assert a.exact != b.exact
    assert a.text == "What is Redis?"


def test_normalisation_whitespace_and_text_parts():
    plain = key(chat("  What   is Redis? "))
    parts = key(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What is Redis?"}]}],
        }
    )
    assert plain.exact == parts.exact == key(chat("What is Redis?")).exact
    assert key(chat("what is redis?")).exact != plain.exact  # case is kept (code, names)


def test_earlier_turns_are_part_of_the_namespace():
    turn = [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Red"}]
    follow = {"model": "m", "messages": [*turn, {"role": "user", "content": "Another?"}]}
    other = {
        "model": "m",
        "messages": [
            turn[0],
            {"role": "assistant", "content": "Blue"},
            {"role": "user", "content": "Another?"},
        ],
    }
    assert key(follow).namespace != key(other).namespace
    assert key(follow).text == "Another?"


def test_images_long_prompts_and_non_user_endings_are_exact_only():
    image = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:x"}},
                ],
            }
        ],
    }
    assert key(image).text is None
    assert key(chat("x" * 1001)).text is None
    assert key(chat("x" * 1000)).text is not None
    ending = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    assert key(ending).text is None


# Computed by the key function as it was before regions: a router with no region must
# keep finding what it stored then, so these never change.
PINNED_NAMESPACE = "b57967f8381463fab26674f0c43f6753"
PINNED_EXACT = "c6bc9714523bf95a7f8e0452837a5093"


def test_without_a_region_the_key_format_is_unchanged():
    body = chat("What is a gateway?", system="Be brief.", temperature=0.2)
    pinned = key(body)
    assert (pinned.namespace, pinned.exact) == (PINNED_NAMESPACE, PINNED_EXACT)
    explicit = request_key("team:a", "m", body, semantic_max_chars=1000, region=None)
    assert (explicit.namespace, explicit.exact) == (PINNED_NAMESPACE, PINNED_EXACT)


def test_a_region_is_part_of_the_namespace():
    body = chat("What is a gateway?")
    eu = request_key("team:a", "m", body, semantic_max_chars=1000, region="eu-west")
    us = request_key("team:a", "m", body, semantic_max_chars=1000, region="us-east")
    plain = key(body)
    assert len({eu.namespace, us.namespace, plain.namespace}) == 3
    assert len({eu.exact, us.exact, plain.exact}) == 3
    assert eu.text == us.text == plain.text  # the semantic layer compares the same prompt
    again = request_key("team:a", "m", body, semantic_max_chars=1000, region="eu-west")
    assert (again.namespace, again.exact) == (eu.namespace, eu.exact)
