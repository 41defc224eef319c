"""Circuit breakers: a deployment that keeps failing is taken out of rotation.

Per deployment, in this router process: `breaker.failures` consecutive failures
(connection errors, timeouts, 5xx; not 4xx, which say the deployment is up, nor 429,
which says it is busy) open the circuit for `breaker.cooldown_s`. Then one request
is let through as a probe (half-open): its success closes the circuit, its failure
opens it for another cool-down. Requests that find a circuit open go to the next
deployment or fallback; the state is in metrics and `GET /v1/deployments/health`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Literal

from services.kernel.config import Deployment

State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclasses.dataclass(slots=True)
class Circuit:
    state: State = "closed"
    failures: int = 0  # consecutive
    opened_at: float = 0.0
    probing: bool = False  # the half-open probe is in flight
    opened_total: int = 0


class Breakers:
    """The circuits of every deployment; `on_change(dep, state)` is told each transition."""

    def __init__(
        self,
        on_change: Callable[[Deployment, State], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.circuits: dict[str, Circuit] = {}
        self.on_change = on_change
        self.clock = clock

    def _circuit(self, dep: Deployment) -> Circuit:
        circuit = self.circuits.get(dep.name)
        if circuit is None:
            circuit = self.circuits[dep.name] = Circuit()
        return circuit

    def _set(self, dep: Deployment, circuit: Circuit, state: State) -> None:
        if circuit.state != state:
            circuit.state = state
            if self.on_change is not None:
                self.on_change(dep, state)

    def state(self, dep: Deployment) -> State:
        circuit = self._circuit(dep)
        if circuit.state == "open" and self.clock() - circuit.opened_at >= dep.config.breaker.cooldown_s:
            self._set(dep, circuit, "half_open")
        return circuit.state

    def retry_in(self, dep: Deployment) -> float:
        """Seconds until an open circuit lets a probe through (0 when not open)."""
        circuit = self._circuit(dep)
        if circuit.state != "open":
            return 0.0
        return max(0.0, dep.config.breaker.cooldown_s - (self.clock() - circuit.opened_at))

    def allow(self, dep: Deployment) -> bool:
        """Whether a request may go to `dep` now; the first caller after a cool-down
        becomes the probe, and others keep away until it has answered."""
        state = self.state(dep)
        if state == "closed":
            return True
        if state == "open":
            return False
        circuit = self._circuit(dep)
        if circuit.probing:
            return False
        circuit.probing = True
        return True

    def success(self, dep: Deployment) -> None:
        circuit = self._circuit(dep)
        circuit.failures = 0
        circuit.probing = False
        self._set(dep, circuit, "closed")

    def failure(self, dep: Deployment) -> None:
        circuit = self._circuit(dep)
        circuit.failures += 1
        was_probe = circuit.probing
        circuit.probing = False
        if was_probe or circuit.state == "half_open" or circuit.failures >= dep.config.breaker.failures:
            if circuit.state != "open":
                circuit.opened_total += 1
            circuit.opened_at = self.clock()
            self._set(dep, circuit, "open")

    def release(self, dep: Deployment) -> None:
        """A probe that ended without a verdict (the client went away): let another probe."""
        self._circuit(dep).probing = False
