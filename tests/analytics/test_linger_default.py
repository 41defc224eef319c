"""usage.consumer_linger_ms: unset, the analytics service lingers and the embedded gateway
does not (its SQLite writer shares the interpreter with the requests)."""

from __future__ import annotations

from services.analytics.app import EMBEDDED_LINGER_MS, SERVICE_LINGER_MS, linger_ms
from services.kernel.config import UsageConfig


def test_unset_linger_follows_the_mode():
    configured = UsageConfig.model_validate({}).consumer_linger_ms
    assert configured is None
    assert linger_ms(configured, embedded=False) == SERVICE_LINGER_MS == 100.0
    assert linger_ms(configured, embedded=True) == EMBEDDED_LINGER_MS == 0.0


def test_a_configured_linger_holds_in_both_modes():
    configured = UsageConfig.model_validate({"consumer_linger_ms": 250}).consumer_linger_ms
    assert linger_ms(configured, embedded=False) == 250
    assert linger_ms(configured, embedded=True) == 250
    zero = UsageConfig.model_validate({"consumer_linger_ms": 0}).consumer_linger_ms
    assert linger_ms(zero, embedded=False) == 0
