"""`python -m services NAME [--host H] [--port P]`: run one service, or the embedded gateway."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import uvicorn

from services.kernel.config import ConfigError
from services.kernel.logs import configure_logging
from services.kernel.settings import Settings

SERVICES = {
    "gateway": ("services.gateway", 8080),
    "router": ("services.router.app", 8080),
    "auth": ("services.auth.app", 8081),
    "classifier": ("services.classifier.app", 8082),
    "cache": ("services.cache.app", 8083),
    "analytics": ("services.analytics.app", 8084),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    module_name, default_port = SERVICES[args.service]
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.service in ("router", "analytics", "cache") and not settings.redis_url:
        print(f"configuration error: REDIS_URL is required to run {args.service} on its own", file=sys.stderr)
        return 2
    configure_logging(args.service, settings.log_level)
    try:
        app = importlib.import_module(module_name).create_app(settings)
    except ConfigError as exc:  # files the configuration names (e.g. the classifier's rules)
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("gateway").info(
        "starting",
        extra={
            "service": args.service,
            "host": args.host,
            "port": args.port or default_port,
            "models": sorted(settings.catalog.models),
        },
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port or default_port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="on",
        backlog=4096,
        timeout_graceful_shutdown=15,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
