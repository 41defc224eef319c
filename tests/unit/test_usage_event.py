import orjson
import pytest

from services.kernel import usage
from services.kernel.usage import BadEvent, decode_event

GOOD = {
    "event_id": "e1",
    "request_id": "r1",
    "key_id": "master",
    "endpoint": "chat.completions",
    "model": "m",
    "provider": "mock",
    "upstream_model": "m",
    "prompt_tokens": 1,
    "completion_tokens": 2,
    "latency_ms": 1.5,
    "ttft_ms": None,
    "status": 200,
    "error_code": None,
    "cached": False,
    "stream": False,
    "created_at": 1_700_000_000.0,
}

# Every field, as the router writes events (decoded without a copy).
COMPLETE = {
    **GOOD,
    "team_id": None,
    "estimated": False,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "cost": None,
    "saved_cost": None,
    "cache": None,
    "deployment": "m/0",
    "attempts": 1,
    "attempt_log": [{"deployment": "m/0", "status": 200, "code": None, "ms": 1.5}],
    "route_reason": None,
    "region": None,
}
assert COMPLETE.keys() == usage.FIELDS.keys()

INT32_MAX = 2**31 - 1


def decoded_as_given(event: dict) -> bool:
    """The decoded event carries every given field unchanged (later fields take defaults)."""
    decoded = decode_event(orjson.dumps(event))
    return {k: decoded[k] for k in event} == event


def test_good_event_decodes():
    assert decoded_as_given(GOOD)
    assert decode_event(orjson.dumps(COMPLETE)) == COMPLETE


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt_tokens": 0, "completion_tokens": INT32_MAX},
        {"status": 100},
        {"status": 599, "error_code": "client_closed_request"},
        {"latency_ms": 0, "ttft_ms": 0.0},
        {"created_at": 946_684_800},
        {"model": "m" * 1024},
        {"model": "", "provider": "", "upstream_model": "", "status": 400, "error_code": "invalid_value"},
    ],
)
def test_values_at_the_edges_decode(changes):
    assert decoded_as_given({**GOOD, **changes})


def test_fields_added_later_decode_with_their_values():
    event = {**GOOD, "team_id": "t1", "estimated": True, "cost": 0.25, "deployment": "m/1", "attempts": 2}
    decoded = decode_event(orjson.dumps(event))
    assert {k: decoded[k] for k in event} == event


@pytest.mark.parametrize(
    "raw",
    [
        b"nope",
        b"[]",
        orjson.dumps({**GOOD, "status": "200"}),
        orjson.dumps({**GOOD, "cached": 0}),
        orjson.dumps({**GOOD, "prompt_tokens": True}),
        orjson.dumps({k: v for k, v in GOOD.items() if k != "event_id"}),
    ],
)
def test_bad_events_are_refused(raw):
    with pytest.raises(BadEvent):
        decode_event(raw)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompt_tokens": INT32_MAX + 1}, "prompt_tokens"),  # PostgreSQL's integer would refuse it
        ({"completion_tokens": -1}, "completion_tokens"),
        ({"prompt_tokens": 2**63 - 1}, "prompt_tokens"),
        ({"latency_ms": -0.5}, "latency_ms"),
        ({"ttft_ms": -1}, "ttft_ms"),
        ({"status": 99}, "status"),
        ({"status": 600}, "status"),
        ({"status": 40000}, "status"),  # past a smallint
        ({"created_at": -1}, "created_at"),
        ({"created_at": 0}, "created_at"),
        ({"created_at": 1e12}, "created_at"),  # year 33658: not a date any store agrees on
        ({"model": "m" * 1025}, "model"),
        ({"event_id": ""}, "event_id"),
        ({"request_id": "r" * 257}, "request_id"),
        ({"key_id": "a\x00b"}, "key_id"),  # PostgreSQL text cannot hold NUL
        ({"error_code": "c" * 257}, "error_code"),
    ],
)
@pytest.mark.parametrize("event", [GOOD, COMPLETE], ids=["first-release", "complete"])
def test_values_out_of_range_are_refused_naming_the_field(changes, field, event):
    with pytest.raises(BadEvent, match=field):
        decode_event(orjson.dumps({**event, **changes}))


def test_non_finite_huge_and_oversized_input_is_refused():
    raw = orjson.dumps(GOOD).replace(b'"latency_ms":1.5', b'"latency_ms":1e400')
    with pytest.raises(BadEvent):
        decode_event(raw)
    raw = orjson.dumps(GOOD).replace(b'"prompt_tokens":1', b'"prompt_tokens":' + b"9" * 30)
    with pytest.raises(BadEvent, match="prompt_tokens"):  # past 64 bits JSON gives a float
        decode_event(raw)
    with pytest.raises(BadEvent, match="bytes"):
        decode_event(orjson.dumps({**GOOD, "padding": "x" * 70_000}))


def test_unknown_fields_are_left_out():
    decoded = decode_event(orjson.dumps({**GOOD, "from_a_newer_router": 1}))
    assert "from_a_newer_router" not in decoded
    assert {k: decoded[k] for k in GOOD} == GOOD


def test_a_field_added_later_takes_its_default_when_an_old_event_lacks_it(monkeypatch):
    """Old spool files replay after a field is added: one table line, with a default."""
    field = usage.Field(usage.text(64, optional=True), default=None)
    monkeypatch.setitem(usage.FIELDS, "added_later", field)
    assert decode_event(orjson.dumps(GOOD))["added_later"] is None
    assert decode_event(orjson.dumps({**GOOD, "added_later": "eu"}))["added_later"] == "eu"
    with pytest.raises(BadEvent, match="added_later"):
        decode_event(orjson.dumps({**GOOD, "added_later": 5}))
