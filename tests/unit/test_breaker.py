"""Circuit breakers and load balancing are pure logic over a clock: tested with a fake one."""

import random

from services.router.breaker import Breakers
from services.router.routing import Balancer
from tests.unit.deployments import deployment

DEP = deployment("m", 0, provider="mock", model="a", breaker={"failures": 3, "cooldown_s": 10})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_the_circuit_and_a_probe_closes_it():
    clock = Clock()
    changes = []
    breakers = Breakers(on_change=lambda d, s: changes.append(s), clock=clock)
    for _ in range(2):
        breakers.failure(DEP)
    assert breakers.allow(DEP)
    breakers.success(DEP)  # a success resets the count
    for _ in range(3):
        breakers.failure(DEP)
    assert breakers.state(DEP) == "open"
    assert not breakers.allow(DEP)
    assert breakers.retry_in(DEP) == 10
    clock.now += 10
    assert breakers.allow(DEP)  # the probe
    assert not breakers.allow(DEP)  # only one at a time
    breakers.success(DEP)
    assert breakers.state(DEP) == "closed"
    assert changes == ["open", "half_open", "closed"]


def test_a_failed_probe_opens_the_circuit_again():
    clock = Clock()
    breakers = Breakers(clock=clock)
    for _ in range(3):
        breakers.failure(DEP)
    clock.now += 11
    assert breakers.allow(DEP)
    breakers.failure(DEP)
    assert breakers.state(DEP) == "open"
    assert breakers.retry_in(DEP) == 10


def test_a_probe_without_verdict_lets_another_probe():
    clock = Clock()
    breakers = Breakers(clock=clock)
    for _ in range(3):
        breakers.failure(DEP)
    clock.now += 10
    assert breakers.allow(DEP)
    breakers.release(DEP)
    assert breakers.allow(DEP)


A = deployment("m", 0, provider="mock", model="a", rpm=2)
B = deployment("m", 1, provider="mock", model="b", tpm=100)


def test_rpm_capacity_is_a_sliding_minute():
    clock = Clock()
    balancer = Balancer(clock=clock)
    balancer.start(A, 0)
    clock.now += 30
    balancer.start(A, 0)
    assert balancer.unavailable(A, 0) == ("rpm", 30.0)
    clock.now += 30.5
    assert balancer.unavailable(A, 0) is None


def test_tpm_capacity_counts_prompt_and_completion_tokens():
    clock = Clock()
    balancer = Balancer(clock=clock)
    assert balancer.unavailable(B, 500) is None  # an empty window takes even a large request
    balancer.start(B, 60)
    balancer.add_tokens(B, 30)
    assert balancer.unavailable(B, 10) is None
    assert balancer.unavailable(B, 11)[0] == "tpm"


def test_least_busy_prefers_fewer_requests_in_flight():
    balancer = Balancer(rng=random.Random(1))
    balancer.start(A, 0)
    balancer.start(A, 0)
    balancer.start(B, 0)
    assert balancer.order((A, B), "least_busy") == [B, A]
    balancer.end(A)
    balancer.end(A)
    assert balancer.order((A, B), "least_busy") == [A, B]


def test_lowest_latency_measures_the_unmeasured_first_then_prefers_the_fastest():
    balancer = Balancer(rng=random.Random(1))
    balancer.observe(A, 0.5)
    assert balancer.order((A, B), "lowest_latency")[0] == B
    balancer.observe(B, 0.9)
    assert balancer.order((A, B), "lowest_latency") == [A, B]
    for _ in range(10):
        balancer.observe(A, 2.0)
    assert balancer.order((A, B), "lowest_latency") == [B, A]


def test_a_throttled_deployment_is_unavailable_until_its_retry_after():
    clock = Clock()
    balancer = Balancer(clock=clock)
    balancer.throttle(A, 7)
    assert balancer.unavailable(A, 0) == ("throttled", 7)
    clock.now += 7
    assert balancer.unavailable(A, 0) is None
