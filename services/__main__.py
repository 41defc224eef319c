"""`python -m services NAME [--host H] [--port P] [--workers N] [--metrics-port M]`:
run one service, or the embedded gateway (docs/operations.md)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from typing import cast

from services.kernel.config import ConfigError
from services.kernel.lifecycle import Lifecycle
from services.kernel.logs import configure_logging
from services.kernel.server import ServerOptions, run, run_worker
from services.kernel.service import ServiceApp
from services.kernel.settings import Settings
from services.kernel.supervisor import supervise

log = logging.getLogger("gateway")

SERVICES = {
    "gateway": ("services.gateway", 8080),
    "router": ("services.router.app", 8080),
    "auth": ("services.auth.app", 8081),
    "classifier": ("services.classifier.app", 8082),
    "cache": ("services.cache.app", 8083),
    "analytics": ("services.analytics.app", 8084),
}
# The apps whose long responses (streams) the drain on SIGTERM ends cleanly.
WITH_LIFECYCLE = frozenset({"gateway", "router"})
# The apps that may run as several workers (analytics and the helpers hold per-process state).
WITH_WORKERS = frozenset({"gateway", "router"})


def _worker_fds(value: str) -> tuple[int, int, int]:
    index, listen, channel = (int(part) for part in value.split(","))
    return index, listen, channel


def _metrics_key(settings: Settings) -> str:
    """The bearer the public /metrics asks for when there is no metrics port."""
    name = settings.config.server.metrics_key_env
    if name is None:
        return settings.master_key
    value = os.environ.get(name, "")
    if len(value) < 8:
        raise ConfigError(f"server.metrics_key_env names {name}, which must be set (at least 8 characters)")
    return value


def _prepare_embedded_storage(settings: Settings) -> None:
    """Create the SQLite file and apply its migrations once, before the workers open it,
    so they do not race to migrate it. Each worker's analytics consumer then writes its
    own events to the one file: SQLite serialises the writers (WAL, 5 s busy timeout),
    and a batch that still fails stays pending in that worker and is retried."""
    from services.analytics.sqlite import SqliteUsageStore
    from services.auth.database import open_database

    async def migrate() -> None:
        store = await SqliteUsageStore.open(settings.data_dir / "gateway.db")
        await store.close()
        accounts = await open_database(None, settings.data_dir)  # auth's own SQLite file
        await accounts.close()

    asyncio.run(migrate())


def _lower_priority(policy: str, increment: int) -> None:
    """Background work yields the CPU to request handling on a shared host
    (analytics.cpu_policy, analytics.nice)."""
    if policy == "normal":
        return
    try:
        if policy == "idle" and hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            log.info("CPU priority lowered", extra={"policy": "idle"})
            return
        if increment:  # "nice", or "idle" on a platform without SCHED_IDLE
            log.info("CPU priority lowered", extra={"policy": "nice", "nice": os.nice(increment)})
    except OSError as exc:  # not permitted by the platform or a seccomp profile: run as started
        log.warning("could not lower the process's CPU priority", extra={"error": str(exc)})


def arguments() -> argparse.ArgumentParser:
    """The command line of `python -m services` (the deployment files are checked against it)."""
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes on the one port (router and gateway)"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="serve /metrics on this port (overrides server.metrics_port)"
    )
    parser.add_argument("--worker-fds", type=_worker_fds, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    module_name, default_port = SERVICES[args.service]
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.workers <= 64:
        print("configuration error: --workers must be between 1 and 64", file=sys.stderr)
        return 2
    if args.workers > 1 and args.service not in WITH_WORKERS:
        print(f"configuration error: {args.service} runs as one process (no --workers)", file=sys.stderr)
        return 2
    if args.service in ("router", "analytics", "cache", "auth") and not settings.redis_url:
        print(f"configuration error: REDIS_URL is required to run {args.service} on its own", file=sys.stderr)
        return 2
    if args.service == "auth" and not settings.database_url:
        # Replicas must share their accounts; the SQLite file is for the embedded gateway.
        print("configuration error: DATABASE_URL is required to run auth on its own", file=sys.stderr)
        return 2
    server_config = settings.config.server
    metrics_port = args.metrics_port if args.metrics_port is not None else server_config.metrics_port
    if args.workers > 1 and metrics_port is None:
        print(
            "configuration error: --workers needs a metrics port (server.metrics_port or --metrics-port):"
            " a scrape of the public port would see one worker only",
            file=sys.stderr,
        )
        return 2
    try:
        metrics_key = None if metrics_port is not None else _metrics_key(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.service, settings.log_level)
    if args.service == "analytics":
        _lower_priority(settings.config.analytics.cpu_policy, settings.config.analytics.nice)
    port = args.port if args.port is not None else default_port
    options = ServerOptions(
        service=args.service,
        host=args.host,
        port=port,
        config=server_config,
        workers=args.workers,
        metrics_port=metrics_port,
        metrics_key=metrics_key,
    )

    if args.workers > 1 and args.worker_fds is None:
        if args.service == "gateway":
            _prepare_embedded_storage(settings)

        def command(index: int, listen_fd: int, channel_fd: int) -> list[str]:
            return [
                sys.executable,
                "-m",
                "services",
                args.service,
                "--host",
                args.host,
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
                "--worker-fds",
                f"{index},{listen_fd},{channel_fd}",
            ]

        return supervise(options, command)

    def build(lifecycle: Lifecycle) -> ServiceApp:
        module = importlib.import_module(module_name)
        try:
            if args.service in WITH_LIFECYCLE:
                return cast(ServiceApp, module.create_app(settings, lifecycle=lifecycle))
            return cast(ServiceApp, module.create_app(settings))
        except ConfigError as exc:  # files the configuration names (e.g. the classifier's rules)
            print(f"configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    logging.getLogger("gateway").info(
        "starting",
        extra={
            "service": args.service,
            "host": args.host,
            "port": port,
            "models": sorted(settings.catalog.models),
        },
    )
    if args.worker_fds is not None:
        _index, listen_fd, channel_fd = args.worker_fds
        return run_worker(options, build, listen_fd, channel_fd)
    return run(options, build)


if __name__ == "__main__":
    sys.exit(main())
