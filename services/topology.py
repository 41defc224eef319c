"""`make up` / `make down`: the distributed topology as local processes.

Each service runs as its own process (router 8080, auth 8081, classifier 8082,
cache 8083, analytics 8084, shifted by `GATEWAY_PORT_BASE - 8080`), talking over
HTTP and Redis, with PostgreSQL for storage. Each serves /metrics on its own port,
1000 above its public one (9080-9084), as in docker-compose.yml and Kubernetes.
Pid files under `.run/` let `down` stop exactly the processes `up` started.

`--region NAME` starts one region's topology, as a region's cluster runs it: its
processes get `GATEWAY_REGION`, their own pid folder (`.run/NAME`) and data folder
(`$GATEWAY_DATA_DIR/NAME`, the router's spool), and with `--redis-db N` their own
Redis database; PostgreSQL is the one every region shares (docs/deployment.md). Two
regions on one machine need two port bases:

    make up REGION=eu-west PORT_BASE=18080 REDIS_DB=1
    make up REGION=us-east PORT_BASE=28080 REDIS_DB=2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from services.kernel.config import REGION_NAME

ORDER = ("analytics", "auth", "classifier", "cache", "router")
OFFSETS = {"router": 0, "auth": 1, "classifier": 2, "cache": 3, "analytics": 4}
METRICS_OFFSET = 1000  # a service's metrics port is its public port + 1000


def ports(base: int) -> dict[str, int]:
    return {name: base + offset for name, offset in OFFSETS.items()}


def metrics_ports(base: int) -> dict[str, int]:
    return {name: port + METRICS_OFFSET for name, port in ports(base).items()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def with_database(redis_url: str, db: int) -> str:
    """`redis_url` pointing at database `db` instead of the one it names."""
    parts = urllib.parse.urlsplit(redis_url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


def up(
    run_dir: Path,
    host: str,
    base: int,
    timeout: float = 60.0,
    *,
    region: str | None = None,
    redis_db: int | None = None,
) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    port_of = ports(base)
    metrics_of = metrics_ports(base)
    env = dict(os.environ)
    for name in ("auth", "classifier", "cache", "analytics"):
        env[f"{name.upper()}_URL"] = f"http://{host}:{port_of[name]}"
    for key in ("REDIS_URL", "DATABASE_URL"):
        if not env.get(key):
            print(f"{key} must be set for the distributed topology", file=sys.stderr)
            return 2
    if redis_db is not None:
        env["REDIS_URL"] = with_database(env["REDIS_URL"], redis_db)
    if region is not None:
        env["GATEWAY_REGION"] = region
        # Each region's router keeps its own usage spool, as each region's cluster does.
        env["GATEWAY_DATA_DIR"] = str(Path(env.get("GATEWAY_DATA_DIR", "data")) / region)
    started = []
    for name in ORDER:
        pid_file = run_dir / f"{name}.pid"
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            print(f"{name} already running (pid {pid_file.read_text().strip()})")
            continue
        log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "services", name),
                *("--host", host, "--port", str(port_of[name]), "--metrics-port", str(metrics_of[name])),
            ],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        pid_file.write_text(str(proc.pid))
        started.append((name, proc))
    deadline = time.monotonic() + timeout
    for name, proc in started:
        url = f"http://{host}:{port_of[name]}"
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"{name} did not become ready; see {run_dir / (name + '.log')}", file=sys.stderr)
                down(run_dir)
                return 1
            time.sleep(0.1)
        where = f" in {region}" if region else ""
        print(f"{name:<10} ready at {url}{where}, metrics on :{metrics_of[name]} (pid {proc.pid})")
    return 0


def down(run_dir: Path, timeout: float = 20.0) -> int:
    pids = {}
    for pid_file in sorted(run_dir.glob("*.pid")):
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            pids[pid_file] = pid
        else:
            pid_file.unlink()
    deadline = time.monotonic() + timeout
    for pid_file, pid in pids.items():
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        print(f"stopped {pid_file.stem} (pid {pid})")
    return 0


def status(run_dir: Path) -> int:
    for pid_file in sorted(run_dir.glob("*.pid")):
        pid = int(pid_file.read_text())
        print(f"{pid_file.stem:<10} pid {pid} {'running' if _alive(pid) else 'gone'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.topology", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--run-dir", type=Path, help="pid files and logs (default .run, or .run/REGION)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("GATEWAY_PORT_BASE", "8080")))
    parser.add_argument("--region", type=_region, help="run one region's topology (sets GATEWAY_REGION)")
    parser.add_argument("--redis-db", type=int, choices=range(16), metavar="N", help="Redis database 0-15")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or Path(os.environ.get("GATEWAY_RUN_DIR", ".run"))
    if args.run_dir is None and args.region:
        run_dir = run_dir / args.region
    if args.command == "up":
        return up(run_dir, args.host, args.port_base, region=args.region, redis_db=args.redis_db)
    if args.command == "down":
        return down(run_dir)
    return status(run_dir)


def _region(value: str) -> str:
    if not re.fullmatch(REGION_NAME, value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a region name (lower-case letters, digits, dashes)"
        )
    return value


if __name__ == "__main__":
    sys.exit(main())
