"""HTTP/1.1 for every service: uvicorn's httptools protocol, with each client bounded.

What a connection may hold is limited here, before any app code runs:

- the request line and headers: `max_header_bytes` (else 431), read within
  `header_timeout_s` of the request's first byte (else 408);
- the body: read within `body_timeout_s` of the end of the headers (else 408, and
  an app waiting in `receive()` gets `http.disconnect`);
- a connection with no request under way (new, or between keep-alive requests)
  is closed after `idle_timeout_s`;
- at most `max_connections` open connections: past it a new one gets 503 and is
  closed.

Errors are OpenAI-format JSON with `connection: close`. httptools (llhttp) keeps
rejecting what it rejects today, such as conflicting Content-Length and
Transfer-Encoding (400).

The hot path stays cheap: a request that arrives in one read arms no timer at
all (a phase timer is armed, one `loop.call_at` handle, only when a read ends
inside the headers or the body), the header size is measured header by header
only past the limit (the bytes read bound it otherwise), and the counters are
plain integers read at scrape time. Measured: about 1 µs per request over
uvicorn's protocol (docs/operations.md).

Pipelining: a request sent behind one still being answered is held to the same
header limit (a read may carry at most one read's worth beyond it); a limit hit
then closes the connection once the answer under way is complete.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("gateway.server")

# Where the parser is in the current request.
_IDLE, _HEAD, _BODY, _BUSY = 0, 1, 2, 3  # BUSY: request read, the app is answering

# Gauges that add up across workers (the merge sums them instead of labelling each worker).
ADDITIVE_GAUGES = frozenset({"gateway_server_connections", "gateway_server_connection_limit"})


def error_bytes(
    status: int,
    reason: str,
    message: str,
    code: str,
    *,
    type_: str = "invalid_request_error",
    headers: tuple[str, ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response with an OpenAI-format error body, closing the connection."""
    body = orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
    head = [
        f"HTTP/1.1 {status} {reason}\r\n",
        "content-type: application/json\r\n",
        f"content-length: {len(body)}\r\n",
        "connection: close\r\n",
        *(f"{h}\r\n" for h in headers),
        "\r\n",
    ]
    return "".join(head).encode("latin-1") + body


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing a request already answered."""


class ConnectionGuard:
    """The limits every connection of one listener shares, its canned answers and its counts."""

    def __init__(
        self,
        *,
        max_header_bytes: int,
        header_timeout_s: float,
        body_timeout_s: float,
        idle_timeout_s: float,
        max_connections: int,
        refusal_log_every_s: float = 10.0,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.refusal_log_every_s = refusal_log_every_s
        self.too_large = error_bytes(
            431,
            "Request Header Fields Too Large",
            f"The request line and headers are larger than the limit of {max_header_bytes} bytes.",
            "request_header_fields_too_large",
        )
        self.head_timeout = error_bytes(
            408,
            "Request Timeout",
            f"The request headers were not received within {header_timeout_s:g} s.",
            "request_timeout",
        )
        self.body_timeout = error_bytes(
            408,
            "Request Timeout",
            f"The request body was not received within {body_timeout_s:g} s.",
            "request_timeout",
        )
        self.bad_request = error_bytes(400, "Bad Request", "Invalid HTTP request.", "invalid_http_request")
        self.refusal = error_bytes(
            503,
            "Service Unavailable",
            "The server has too many open connections; retry later.",
            "too_many_connections",
            type_="api_error",
            headers=("retry-after: 1",),
        )
        # Counts, read by `ConnectionCollector` at scrape time.
        self.open: set[Any] = set()  # uvicorn's live connection set, bound at start
        self.refused = 0
        self.header_too_large = 0
        self.bad_requests = 0
        self.header_timeouts = 0
        self.body_timeouts = 0
        self.idle_closed = 0
        self._refused_unlogged = 0
        self._last_refusal_log = float("-inf")

    def protocol(self) -> type[GuardedHttpToolsProtocol]:
        """The protocol class to give uvicorn (`Config(http=...)`), bound to this guard."""
        return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": self})

    def note_refusal(self, now: float) -> None:
        self.refused += 1
        self._refused_unlogged += 1
        if now - self._last_refusal_log >= self.refusal_log_every_s:
            log.warning(
                "connections refused: the connection cap is reached",
                extra={"refused": self._refused_unlogged, "max_connections": self.max_connections},
            )
            self._refused_unlogged = 0
            self._last_refusal_log = now


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, time and connection bounds (module docstring)."""

    guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._rejected = False

    # -- connection --------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        if len(self.connections) > guard.max_connections:
            guard.note_refusal(self.loop.time())
            transport.write(guard.refusal)
            transport.close()
            return
        # uvicorn arms its keep-alive timer after a response only; a connection that never
        # sends a request gets the same deadline from the start.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.guard.idle_closed += 1
        super().timeout_keep_alive_handler()

    # -- reading -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        phase = self._phase
        if phase == _IDLE:  # a request starts with these bytes
            self._phase = _HEAD
            self._head_bytes = len(data)
        elif phase != _BODY:  # headers, or a pipelined request's while one is answered
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # no protocol upgrades here; the request is answered as plain HTTP
        except httptools.HttpParserError:
            if not self._rejected:
                self.guard.bad_requests += 1
                self._answer_and_close(self.guard.bad_request)
            return
        phase = self._phase
        if phase == _HEAD:
            # Headers incomplete after this read: httptools buffers the partial header.
            if self._head_bytes > self.guard.max_header_bytes:
                self.guard.header_too_large += 1
                self._answer_and_close(self.guard.too_large)
            elif self._timer is None:
                self._arm(self.guard.header_timeout_s, self._head_expired)
        elif phase == _BODY:
            if self._timer is None and not self.pipeline:
                self._arm(self.guard.body_timeout_s, self._body_expired)
        elif phase == _BUSY and self._head_bytes > self.guard.max_header_bytes:
            self.guard.header_too_large += 1  # a pipelined request's headers, too large
            self._answer_and_close(self.guard.too_large)

    def on_headers_complete(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        guard = self.guard
        # The bytes counted since the request's first one bound its header size; measure
        # exactly only past the limit, or for a pipelined request (counted from mid-read).
        if self._phase != _HEAD or self._head_bytes > guard.max_header_bytes:
            size = len(self.url) + 12  # "GET " ... " HTTP/1.1\r\n"
            for name, value in self.headers:
                size += len(name) + len(value) + 4
            if size > guard.max_header_bytes:
                guard.header_too_large += 1
                self._answer_and_close(guard.too_large)
                raise _Rejected  # stops the parser: no request cycle, no app task
        self._head_bytes = 0
        self._phase = _BODY
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # Answered before its body was read (413, say): idle again now the body is in.
            self._phase = _IDLE
            if self.timeout_keep_alive_task is None and not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
        else:
            self._phase = _BUSY
        HttpToolsProtocol.on_message_complete(self)

    def on_response_complete(self) -> None:
        if self._phase == _BUSY:
            # Bytes of a pipelined request already here: its headers are being read.
            self._phase = _HEAD if self._head_bytes else _IDLE
        HttpToolsProtocol.on_response_complete(self)
        # The next request has begun (pipelined, or an early answer's body still coming):
        # it gets its deadline from now.
        phase = self._phase
        if phase != _IDLE and self._timer is None and not self.transport.is_closing():
            if phase == _HEAD:
                self._arm(self.guard.header_timeout_s, self._head_expired)
            elif phase == _BODY and not self.pipeline:
                self._arm(self.guard.body_timeout_s, self._body_expired)

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._timer = self.loop.call_at(self.loop.time() + delay, callback)

    # -- deadlines and refusals --------------------------------------------

    def _head_expired(self) -> None:
        self._timer = None
        self.guard.header_timeouts += 1
        self._answer_and_close(self.guard.head_timeout)

    def _body_expired(self) -> None:
        self._timer = None
        self.guard.body_timeouts += 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started:
                self.transport.write(self.guard.body_timeout)
            # The app may be waiting in receive(): it now gets http.disconnect, and what it
            # sends from here on is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _answer_and_close(self, response: bytes) -> None:
        """Answer `response` and close; if an earlier response on this connection is still
        being written (pipelining), let it finish and close after it instead."""
        self._rejected = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


class ConnectionCollector(Collector):
    """The guard's counts as Prometheus metrics, read at scrape time (nothing on the hot path)."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[Metric]:
        g = self.guard
        yield GaugeMetricFamily("gateway_server_connections", "Open client connections", len(g.open))
        yield GaugeMetricFamily(
            "gateway_server_connection_limit", "Open client connections allowed", g.max_connections
        )
        yield CounterMetricFamily(
            "gateway_server_connections_refused",
            "Connections refused (503, closed) because the connection cap was reached",
            g.refused,
        )
        rejected = CounterMetricFamily(
            "gateway_server_requests_rejected",
            "Requests refused by the server before any app saw them, by reason",
            labels=["reason"],
        )
        rejected.add_metric(["header_too_large"], g.header_too_large)
        rejected.add_metric(["bad_request"], g.bad_requests)
        yield rejected
        timeouts = CounterMetricFamily(
            "gateway_server_timeouts",
            "Connections closed by a server deadline, by phase (headers, body: 408; idle)",
            labels=["phase"],
        )
        timeouts.add_metric(["headers"], g.header_timeouts)
        timeouts.add_metric(["body"], g.body_timeouts)
        timeouts.add_metric(["idle"], g.idle_closed)
        yield timeouts
