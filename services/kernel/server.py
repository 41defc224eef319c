"""The process server: runs any service app under uvicorn with the gateway's rules.

- Clients are bounded by `services.kernel.protocol` (header size and time, body
  time, idle connections, a connection cap under the raised open-file limit).
- `/metrics` is served off the event loop, on its own port when one is set (the
  public port then answers 404 there) or on the public port with a bearer key.
- Shutdown, on SIGTERM or SIGINT: stop accepting and close idle connections, then
  `Lifecycle.drain()` (streams get `drain_s`, then end with an error event), then
  wait for the connections still open until `shutdown_timeout_s` has passed
  since the signal, then the app's lifespan shutdown (flushes, pools).
- `run()` is one process; `run_worker()` is one of the N processes that
  `services.kernel.supervisor` starts on a shared listening socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import socket
import struct
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp
from uvicorn.server import ServerState

from services.kernel.config import ServerConfig
from services.kernel.lifecycle import Lifecycle
from services.kernel.protocol import ConnectionCollector, ConnectionGuard
from services.kernel.scrape import (
    MetricsEndpoint,
    MetricsPage,
    guard_public_metrics,
    metrics_only,
    process_page,
)
from services.kernel.service import ServiceApp

log = logging.getLogger("gateway.server")

AppFactory = Callable[[Lifecycle], ServiceApp]
"""Builds the service app for one process, given that process's Lifecycle."""

# Supervisor ↔ worker frames on their socketpair: one type byte, a 4-byte length, the payload.
FRAME = struct.Struct("!cI")
READY, METRICS = b"R", b"M"


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Where and how to serve, resolved from `server:` in gateway.yaml and the command line."""

    service: str
    host: str
    port: int
    config: ServerConfig
    workers: int = 1
    metrics_port: int | None = None
    metrics_key: str | None = dataclasses.field(default=None, repr=False)  # public /metrics bearer


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit", extra={"soft": soft, "error": str(exc)})
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_guard(config: ServerConfig, open_files: int, *, cap: int | None = None) -> ConnectionGuard:
    """The client limits; the cap leaves half the open files for upstream connections and files."""
    wanted = config.max_connections if cap is None else cap
    cap = max(1, min(wanted, open_files // 2))
    if cap < wanted:
        log.info(
            "connection cap lowered to half the open-file limit",
            extra={"max_connections": cap, "open_file_limit": open_files},
        )
    return ConnectionGuard(
        max_header_bytes=config.max_header_bytes,
        header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        max_connections=cap,
    )


def bind(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket that child processes can inherit."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.set_inheritable(True)
    return sock


# -- the server ------------------------------------------------------------


class _CancelledAtShutdown(logging.Filter):
    """Responses cancelled at the shutdown deadline are expected: one summary line, not a
    traceback each from uvicorn's 'Exception in ASGI application'."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            self.count += 1
            return False
        return True


def uvicorn_config(app: ASGIApp, guard: ConnectionGuard, *, lifespan: str = "on") -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=guard.protocol(),
        ws="none",
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        backlog=4096,
        timeout_keep_alive=guard.idle_timeout_s,  # type: ignore[arg-type]
    )
    config.load()
    return config


async def open_listener(app: ASGIApp, sock: socket.socket, guard: ConnectionGuard) -> asyncio.Server:
    """Serve `app` on `sock` with the guarded protocol, outside any uvicorn Server (no lifespan)."""
    config = uvicorn_config(app, guard, lifespan="off")
    state = ServerState()
    guard.open = state.connections
    protocol = config.http_protocol_class
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: protocol(config=config, server_state=state, app_state={}),  # type: ignore[call-arg]
        sock=sock,
        backlog=4096,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's Server with the drain step, an optional metrics port and an optional
    supervisor channel (worker mode)."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        lifecycle: Lifecycle,
        shutdown_timeout_s: float,
        metrics: tuple[ASGIApp, socket.socket, ConnectionGuard] | None = None,
        channel: WorkerChannel | None = None,
    ) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.shutdown_timeout_s = shutdown_timeout_s
        self.metrics = metrics
        self.channel = channel
        self.metrics_server: asyncio.Server | None = None
        self.guard: ConnectionGuard | None = None  # set by build_server, for tests and logs
        self.app: ServiceApp | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.metrics is not None:
            app, sock, guard = self.metrics
            self.metrics_server = await open_listener(app, sock, guard)
        if self.channel is not None:
            await self.channel.start(self._supervisor_gone)

    def _supervisor_gone(self) -> None:
        log.warning("the supervisor is gone; shutting down")
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.info("shutting down: no new connections, draining", extra={"drain_s": self.lifecycle.drain_s})
        # Stop accepting; close idle keep-alive connections, and let busy ones close after
        # their response. uvicorn's own shutdown below repeats both, harmlessly.
        for server in getattr(self, "servers", []):
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        quiet = _CancelledAtShutdown()
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(quiet)
        try:
            await self.lifecycle.drain()
            remaining = self.shutdown_timeout_s - (loop.time() - started)
            self.config.timeout_graceful_shutdown = max(0.1, remaining)  # type: ignore[assignment]
            await super().shutdown(sockets=sockets)
        finally:
            uvicorn_log.removeFilter(quiet)
            if self.metrics_server is not None:
                self.metrics_server.close()
            if self.channel is not None:
                self.channel.close()
        if quiet.count:
            log.warning("responses cancelled at the shutdown deadline", extra={"count": quiet.count})


class WorkerChannel:
    """A worker's end of its socketpair with the supervisor: says it is ready, then
    answers each metrics request with this process's page. EOF means the supervisor died."""

    def __init__(self, sock: socket.socket, page: Callable[[], Awaitable[bytes]]) -> None:
        self.sock = sock
        self.page = page
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self, on_lost: Callable[[], None]) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=self.sock)
        self._writer = writer
        writer.write(FRAME.pack(READY, 0))
        await writer.drain()
        self._task = asyncio.create_task(self._serve(reader, writer, on_lost), name="supervisor-channel")

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_lost: Callable[[], None]
    ) -> None:
        try:
            while command := await reader.read(1):
                if command == METRICS:
                    body = await self.page()
                    writer.write(FRAME.pack(METRICS, len(body)) + body)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        on_lost()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()


# -- entry points ----------------------------------------------------------


def build_server(
    options: ServerOptions,
    build: AppFactory,
    *,
    metrics_sock: socket.socket | None = None,
    channel_sock: socket.socket | None = None,
) -> GatewayServer:
    """Assemble one process's server: raise the open-file limit, build the app with this
    process's Lifecycle, guard the connections, place /metrics."""
    cfg = options.config
    open_files = raise_open_file_limit()
    guard = connection_guard(cfg, open_files)
    lifecycle = Lifecycle(drain_s=cfg.drain_s)
    app = build(lifecycle)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ConnectionCollector(guard))
    page = MetricsPage(process_page(app, registry))

    if options.metrics_port is not None or channel_sock is not None:
        public_metrics = MetricsEndpoint(None)  # 404: the metrics port (or the supervisor's) has them
    else:
        public_metrics = MetricsEndpoint(page, key=options.metrics_key)
    config = uvicorn_config(guard_public_metrics(app, public_metrics), guard)
    config.host, config.port = options.host, options.port

    metrics = None
    if metrics_sock is not None:
        # Prometheus and a few people: a small cap of its own, apart from the clients'.
        metrics_guard = connection_guard(cfg, open_files, cap=64)
        metrics = (metrics_only(MetricsEndpoint(page)), metrics_sock, metrics_guard)
    server = GatewayServer(
        config,
        lifecycle=lifecycle,
        shutdown_timeout_s=cfg.shutdown_timeout_s,
        metrics=metrics,
        channel=WorkerChannel(channel_sock, page) if channel_sock is not None else None,
    )
    guard.open = server.server_state.connections
    server.guard, server.app = guard, app
    log.info(
        "serving",
        extra={
            "host": options.host,
            "port": options.port,
            "metrics_port": options.metrics_port,
            "max_connections": guard.max_connections,
            "supervised": channel_sock is not None,
        },
    )
    return server


def run(options: ServerOptions, build: AppFactory) -> int:
    """Serve in this process until SIGTERM or SIGINT."""
    metrics_sock = None
    if options.metrics_port is not None:
        try:
            metrics_sock = bind(options.host, options.metrics_port)
        except OSError as exc:
            log.error("cannot listen on the metrics port", extra={"port": options.metrics_port, "error": exc})
            return 1
    build_server(options, build, metrics_sock=metrics_sock).run()
    return 0


def run_worker(options: ServerOptions, build: AppFactory, listen_fd: int, channel_fd: int) -> int:
    """Serve as a supervised worker on the inherited listening socket `listen_fd`."""
    server = build_server(options, build, channel_sock=socket.socket(fileno=channel_fd))
    server.run(sockets=[socket.socket(fileno=listen_fd)])
    return 0
