"""Whether Redis answers, as the router's auth and limit stages see it.

After a failed call Redis is considered away for `retry_after_s`: the stages use
their in-process fallbacks at once instead of each request waiting for a timeout,
and one request tries Redis again when the time is up. Every transition is logged
once and shown in the `gateway_redis_degraded` gauge.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger("gateway.router")


class Reachability:
    def __init__(self, registry: CollectorRegistry | None, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        self.down_until = 0.0
        self.degraded = False
        self.gauge = Gauge(
            "gateway_redis_degraded",
            "1 while Redis is unreachable and limits and key lookups use in-process state",
            registry=registry,
        )

    @property
    def usable(self) -> bool:
        return not self.degraded or time.monotonic() >= self.down_until

    def failed(self, stage: str, error: BaseException) -> None:
        self.down_until = time.monotonic() + self.retry_after_s
        if not self.degraded:
            self.degraded = True
            self.gauge.set(1)
            log.warning(
                "redis unreachable: using in-process state",
                extra={"stage": stage, "error": type(error).__name__},
            )

    def succeeded(self) -> None:
        if self.degraded:
            self.degraded = False
            self.gauge.set(0)
            log.warning("redis reachable again")
