"""Private Redis and PostgreSQL servers that a test may stop, kill and pause.

The machine's shared servers are never stopped (other test runs use them); outage
tests start their own on a free port in a temporary folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port


def _answers(port: int, probe: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if not probe:
                return True
            s.sendall(probe)
            return s.recv(64).startswith(expect)
    except OSError:
        return False


class RedisServer:
    """A redis-server of our own; the stream survives a kill (AOF, fsync on every write),
    as a production Redis holding the usage stream should be configured."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, deadline: float = 20.0) -> None:
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.directory),
            "save": "",
            "appendonly": "yes",
            "appendfsync": "always",
            "logfile": "redis.log",
        }
        self.proc = subprocess.Popen(
            ["redis-server", *(arg for name, value in options.items() for arg in (f"--{name}", value))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + deadline
        while not _answers(self.port, b"PING\r\n", b"+PONG"):
            if self.proc.poll() is not None or time.monotonic() > end:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"private redis-server did not start on {self.port}: {log}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs; what Redis acknowledged is in the AOF."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.kill()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresCluster:
    """A PostgreSQL cluster of our own (initdb in a temporary folder, trust auth)."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if self.initdb is None or self.pg_ctl is None:
            pytest.skip("initdb/pg_ctl not found (Debian: apt-get install postgresql)")
        # Not under pytest's tmp_path: the server runs as `postgres`, which must reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="usage-pg-"))
        self.port = free_port()
        self.running = False
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self._run(
            self.initdb,
            "-D", str(self.directory / "data"),
            "-A", "trust",
            "-U", "postgres",
            "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_postgres, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr[-2000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        assert self.pg_ctl is not None
        self._run(
            self.pg_ctl, "-D", str(self.directory / "data"), "-o", options,
            "-l", str(self.directory / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip
        self.running = True

    def ensure_started(self) -> None:
        if not self.running:
            self.start()

    def stop(self) -> None:
        """Immediate shutdown: connections are cut, as in a crash."""
        assert self.pg_ctl is not None
        self._run(self.pg_ctl, "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop")
        self.running = False

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(RuntimeError):
                self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
