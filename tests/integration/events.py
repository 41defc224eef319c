"""Usage events for integration tests, tagged so each test can find and delete its rows."""

from __future__ import annotations

import time
import uuid

from services.kernel.usage import UsageEvent


def make_event(tag: str, i: int = 0, **changes: object) -> UsageEvent:
    event: UsageEvent = {
        "event_id": uuid.uuid4().hex,
        "request_id": f"{tag}-{i}",
        "key_id": tag,
        "team_id": None,
        "endpoint": "chat.completions",
        "model": "mock-small",
        "provider": "mock",
        "upstream_model": "mock-small",
        "prompt_tokens": 10 + i,
        "completion_tokens": 5,
        "estimated": False,
        "latency_ms": 1.25,
        "ttft_ms": None,
        "status": 200,
        "error_code": None,
        "cached": False,
        "stream": False,
        "created_at": time.time(),
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost": None,
        "saved_cost": None,
        "cache": None,
        "deployment": "mock-small/0",
        "attempts": 1,
        "route_reason": None,
        "region": None,
    }
    event.update(changes)  # type: ignore[typeddict-item]
    return event
