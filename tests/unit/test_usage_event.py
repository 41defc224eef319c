import orjson
import pytest

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
    "created_at": 1.0,
}


def test_good_event_decodes():
    decoded = decode_event(orjson.dumps(GOOD))
    assert {k: decoded[k] for k in GOOD} == GOOD  # type: ignore[literal-required]
    assert (decoded["team_id"], decoded["estimated"], decoded["cost"], decoded["attempts"]) == (
        None,
        False,
        None,
        0,
    )


def test_fields_added_later_decode_with_their_values():
    event = {**GOOD, "team_id": "t1", "estimated": True, "cost": 0.25, "deployment": "m/1", "attempts": 2}
    decoded = decode_event(orjson.dumps(event))
    assert {k: decoded[k] for k in event} == event  # type: ignore[literal-required]


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
