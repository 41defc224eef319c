"""`python -m services ...` as a real process for the tests: started on free ports with
its own configuration and data folder, stopped (SIGTERM, then kill) at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import MASTER_KEY, free_port

READY_DEADLINE_S = 60.0


@dataclasses.dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None
    log_path: Path
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> set[int]:
        """The pids of this process's children (Linux /proc)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return {int(pid) for pid in path.read_text().split()}
        except FileNotFoundError:
            return set()


def environment(tmp_path: Path, config: str) -> dict[str, str]:
    (tmp_path / "gateway.yaml").write_text(config)
    drop = {"REDIS_URL", "DATABASE_URL"}
    return {
        **{k: v for k, v in os.environ.items() if k not in drop},
        "GATEWAY_CONFIG": str(tmp_path / "gateway.yaml"),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    }


def wait_ready(process: Process) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    with httpx.Client(base_url=process.url, timeout=5) as http:
        while True:
            assert process.proc.poll() is None, (
                f"exited with {process.proc.returncode}:\n{process.log_text()}"
            )
            with contextlib.suppress(httpx.TransportError):
                if http.get("/readyz").status_code == 200:
                    return
            assert time.monotonic() < deadline, f"not ready in {READY_DEADLINE_S:g} s:\n{process.log_text()}"
            time.sleep(0.05)


@contextlib.contextmanager
def running(tmp_path: Path, config: str, *args: str, metrics_port: bool = False) -> Iterator[Process]:
    """`python -m services gateway --port P [--metrics-port M] *args`, ready to serve."""
    port = free_port()
    mport = free_port() if metrics_port else None
    command = [sys.executable, "-m", "services", "gateway", "--port", str(port)]
    if mport is not None:
        command += ["--metrics-port", str(mport)]
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, *args], env=environment(tmp_path, config), stdout=log, stderr=subprocess.STDOUT
        )
    process = Process(proc, port, mport, log_path, tmp_path / "data")
    try:
        wait_ready(process)
        yield process
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
