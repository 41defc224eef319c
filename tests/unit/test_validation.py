import pytest

from services.kernel.errors import InvalidRequest
from services.router.validation import check_chat, check_embeddings, parse_object

MSG = [{"role": "user", "content": "hi"}]


def test_parse_object_rejects_non_objects():
    for raw in (b"", b"not json", b"[1,2]", b'"s"', b"{"):
        with pytest.raises(InvalidRequest):
            parse_object(raw)
    assert parse_object(b'{"a": 1}') == {"a": 1}


def test_check_chat_returns_model_stream_and_usage_flag():
    assert check_chat({"model": "m", "messages": MSG}) == ("m", False, False)
    body = {"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    assert check_chat(body) == ("m", True, True)
    assert check_chat({"model": "m", "messages": MSG, "stream": None}) == ("m", False, False)


def test_unknown_and_uninterpreted_fields_are_accepted():
    body = {"model": "m", "messages": MSG, "tools": [{"type": "function"}], "seed": 3, "x_custom": {"a": 1}}
    check_chat(body)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"n": 1000}, "n"),
        ({"top_p": "x"}, "top_p"),
    ],
)
def test_check_chat_names_the_bad_parameter(change, param):
    body = {"model": "m", "messages": MSG, **change}
    with pytest.raises(InvalidRequest) as err:
        check_chat(body)
    assert err.value.param == param
    assert err.value.status == 400


@pytest.mark.parametrize("value", ["x", ["a", "b"], [1, 2], [[1], [2, 3]]])
def test_check_embeddings_accepts_openai_input_shapes(value):
    assert check_embeddings({"model": "e", "input": value}) == "e"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "e"},
        {"model": "e", "input": ""},
        {"model": "e", "input": []},
        {"model": "e", "input": ["a", 1]},
        {"model": "e", "input": [[]]},
        {"model": "e", "input": "x", "encoding_format": "hex"},
        {"model": "e", "input": "x", "dimensions": 0},
        {"input": "x"},
    ],
)
def test_check_embeddings_rejects_bad_shapes(body):
    with pytest.raises(InvalidRequest):
        check_embeddings(body)


def test_unhashable_role_is_a_400_not_a_crash():
    for role in (["user"], {"r": 1}):
        with pytest.raises(InvalidRequest) as err:
            check_chat({"model": "m", "messages": [{"role": role, "content": "x"}]})
        assert err.value.param == "messages[0].role"


def test_deep_nesting_is_refused_before_anything_re_encodes_it():
    deep = b'{"model": "m", "tools": ' + b"[" * 300 + b"]" * 300 + b"}"
    with pytest.raises(InvalidRequest, match="nested"):
        parse_object(deep)
    wide = b'{"tools": [' + b",".join([b"{}"] * 500) + b"]}"
    assert len(parse_object(wide)["tools"]) == 500  # many brackets, shallow: fine
