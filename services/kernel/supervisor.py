"""`--workers N`: N worker processes on one listening socket, and their metrics as one.

The supervisor binds the public socket once and starts each worker as a new
interpreter (`python -m services NAME ... --worker-fds`), which inherits that
socket and one end of a socketpair. The kernel hands each new connection to one
of the workers accepting on the shared socket; the supervisor itself serves no
requests and never imports the app.

- A worker that dies is started again (after 0.5 s, doubling up to 30 s while
  it keeps dying young); the listening socket outlives it, so connections
  queue instead of being refused.
- SIGTERM or SIGINT: the supervisor closes its copy of the socket and sends
  SIGTERM to every worker; each drains and shuts down on its own (see
  `services.kernel.server`); a worker still running after the shutdown timeout
  plus a margin is killed.
- The metrics port belongs to the supervisor: a scrape asks every worker for its
  page over the socketpair (each renders in a thread, off its event loop) and
  answers the merge (`services.kernel.exposition`). The request path pays
  nothing for this. The counts of a worker that died stay in the sums (its last
  scraped page is kept), so counters never go backwards; what it counted after
  the last scrape is lost with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest

from services.kernel import exposition
from services.kernel.protocol import ADDITIVE_GAUGES, ConnectionGuard
from services.kernel.scrape import MetricsEndpoint, metrics_only
from services.kernel.server import (
    FRAME,
    METRICS,
    READY,
    ServerOptions,
    bind,
    connection_guard,
    open_listener,
    raise_open_file_limit,
)

log = logging.getLogger("gateway.supervisor")

WorkerCommand = Callable[[int, int, int], list[str]]
"""(worker index, listening fd, channel fd) → the worker's command line."""

SCRAPE_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 120.0
KILL_MARGIN_S = 5.0


@dataclasses.dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    started_at: float = 0.0
    ready: bool = False  # said READY; until then the channel carries nothing else
    failures: int = 0  # deaths in a row, each soon after its start
    owed: int = 0  # metrics requests sent and not yet answered (a late answer is skipped)
    last: exposition.Page = dataclasses.field(default_factory=exposition.Page)  # summed families


class Supervisor:
    """Starts, watches and stops the workers; serves their merged metrics."""

    def __init__(
        self,
        *,
        workers: int,
        command: WorkerCommand,
        listen: socket.socket,
        metrics: tuple[socket.socket, ConnectionGuard] | None,
        shutdown_timeout_s: float,
        scrape_timeout_s: float = SCRAPE_TIMEOUT_S,
    ) -> None:
        self.workers = [Worker(i) for i in range(workers)]
        self.scrape_timeout_s = scrape_timeout_s
        self.command = command
        self.listen = listen
        self.metrics = metrics
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stopping = asyncio.Event()
        self.retired = exposition.Page()  # summed counts of workers that died
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.alive = Gauge("gateway_server_workers", "Worker processes running", registry=self.registry)
        self.restarts = Counter(
            "gateway_server_worker_restarts", "Workers started again after they died", registry=self.registry
        )
        self.scrape_failures = Counter(
            "gateway_server_worker_scrape_failures",
            "Workers that did not answer a metrics request in time",
            registry=self.registry,
        )

    # -- workers -----------------------------------------------------------

    async def _start(self, worker: Worker) -> None:
        mine, theirs = socket.socketpair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self.command(worker.index, self.listen.fileno(), theirs.fileno()),
                pass_fds=(self.listen.fileno(), theirs.fileno()),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        worker.reader, worker.writer = await asyncio.open_unix_connection(sock=mine)
        worker.started_at = asyncio.get_running_loop().time()
        worker.ready = False

    async def _wait_ready(self, worker: Worker) -> bool:
        """True once the worker says it serves; False if it dies or hangs first (then it is killed)."""
        assert worker.reader is not None
        assert worker.process is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                kind, _ = FRAME.unpack(await worker.reader.readexactly(FRAME.size))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            kind = b""
        worker.ready = kind == READY
        if not worker.ready and worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
        return worker.ready

    def _retire(self, worker: Worker) -> None:
        """Keep what a dead worker had counted; close its channel."""
        self.retired.add(worker.last)
        worker.last = exposition.Page()
        if worker.writer is not None:
            worker.writer.close()
        worker.process = worker.reader = worker.writer = None
        worker.ready = False

    async def _watch(self, worker: Worker) -> None:
        """Run one worker slot until shutdown: restart its process whenever it dies."""
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping.is_set():
                return
            if code in (-signal.SIGTERM, -signal.SIGINT):
                # Perhaps a Ctrl+C that reached the whole process group before us.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=0.5)
                if self.stopping.is_set():
                    return
            young = loop.time() - worker.started_at < 10.0
            worker.failures = worker.failures + 1 if young else 0
            delay = min(30.0, 0.5 * 2 ** max(0, worker.failures - 1)) if young else 0.0
            log.warning(
                "worker died; starting it again",
                extra={"worker": worker.index, "exit": code, "restart_in_s": delay},
            )
            self._retire(worker)
            self._update_alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)
            if self.stopping.is_set():
                return
            await self._start(worker)
            self.restarts.inc()
            if not await self._wait_ready(worker):
                continue  # it died starting; the loop sees its exit status
            self._update_alive()

    def _update_alive(self) -> None:
        self.alive.set(sum(1 for w in self.workers if w.process is not None and w.process.returncode is None))

    # -- metrics -----------------------------------------------------------

    async def _ask(self, worker: Worker) -> bytes | None:
        """This worker's page, or None if it does not answer in time. Answers come in
        order; one that comes after its scrape gave up is read and dropped by the next."""
        if not worker.ready or worker.writer is None or worker.reader is None:
            return None
        async with worker.lock:
            try:
                async with asyncio.timeout(self.scrape_timeout_s):
                    worker.writer.write(METRICS)
                    worker.owed += 1
                    await worker.writer.drain()
                    while True:
                        kind, size = FRAME.unpack(await worker.reader.readexactly(FRAME.size))
                        body = await worker.reader.readexactly(size)
                        worker.owed -= 1
                        if worker.owed == 0:
                            break
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
                self.scrape_failures.inc()
                return None
        return body if kind == METRICS else None

    async def page(self) -> bytes:
        """The merged page of every worker and the supervisor."""
        answers = await asyncio.gather(*(self._ask(w) for w in self.workers))
        own = generate_latest(self.registry)

        def merge() -> bytes:
            sources: list[tuple[str, exposition.Page]] = []
            for worker, text in zip(self.workers, answers, strict=True):
                if text is None:  # no answer: its last counts, so the sums do not drop
                    sources.append((str(worker.index), worker.last))
                    continue
                parsed = exposition.parse(text)
                worker.last = parsed.summed(ADDITIVE_GAUGES)
                sources.append((str(worker.index), parsed))
            sources.append(("supervisor", exposition.parse(own)))
            sources.append(("retired", self.retired))
            return exposition.render(exposition.merge(sources, ADDITIVE_GAUGES))

        return await asyncio.to_thread(merge)

    # -- the whole run -----------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        for worker in self.workers:
            await self._start(worker)
        starting = asyncio.ensure_future(asyncio.gather(*(self._wait_ready(w) for w in self.workers)))
        stop = asyncio.ensure_future(self.stopping.wait())
        pending: list[asyncio.Future[Any]] = [starting, stop]
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():  # a signal while the workers were starting
            starting.cancel()
            await self._stop_workers()
            return 0
        stop.cancel()
        if not all(starting.result()):
            log.error("workers did not start; stopping")
            await self._stop_workers()
            return 1
        self._update_alive()
        metrics_server = None
        if self.metrics is not None:
            sock, guard = self.metrics
            endpoint = MetricsEndpoint(self.page)
            metrics_server = await open_listener(metrics_only(endpoint), sock, guard)
        log.info("workers ready", extra={"workers": len(self.workers), "pid": os.getpid()})
        watchers = [asyncio.create_task(self._watch(w), name=f"worker-{w.index}") for w in self.workers]
        await self.stopping.wait()
        log.info("stopping workers")
        await self._stop_workers()
        for task in watchers:
            task.cancel()
        if metrics_server is not None:
            metrics_server.close()
        return 0

    async def _stop_workers(self) -> None:
        self.stopping.set()
        self.listen.close()  # the workers' copies keep it open until each has stopped accepting
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(p.wait()) for p in running]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.shutdown_timeout_s + KILL_MARGIN_S)
            for process in running:
                if process.returncode is None:
                    log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late)
        for worker in self.workers:
            if worker.writer is not None:
                worker.writer.close()


def supervise(options: ServerOptions, command: WorkerCommand) -> int:
    """Bind the sockets, run `options.workers` workers until SIGTERM or SIGINT; the exit status."""
    open_files = raise_open_file_limit()
    try:
        listen = bind(options.host, options.port)
        metrics = None
        if options.metrics_port is not None:
            metrics = (
                bind(options.host, options.metrics_port),
                connection_guard(options.config, open_files, cap=64),
            )
    except OSError as exc:
        log.error("cannot listen", extra={"host": options.host, "error": str(exc)})
        return 1
    log.info(
        "supervising",
        extra={
            "service": options.service,
            "host": options.host,
            "port": listen.getsockname()[1],
            "metrics_port": options.metrics_port,
            "workers": options.workers,
        },
    )
    supervisor = Supervisor(
        workers=options.workers,
        command=command,
        listen=listen,
        metrics=metrics,
        shutdown_timeout_s=options.config.shutdown_timeout_s,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(supervisor.run())
