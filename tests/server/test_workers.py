"""`python -m services gateway --workers 2`: one port, two processes, one metrics page,
every usage record stored, a dead worker replaced, SIGTERM stopping them all."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.conftest import MASTER_KEY
from tests.server.processes import Process, environment, free_port, running

CONFIG = """
usage: {flush_interval_ms: 10}
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
"""
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}
DEADLINE_S = 60.0


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def chat(url: str, request_id: str) -> None:
    # A new connection each time, so the kernel spreads them over the workers.
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "mock-small", "messages": [{"role": "user", "content": "hi"}]},
        headers={**AUTH, "x-request-id": request_id},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def stored_rows(gateway: Process, prefix: str) -> int:
    with sqlite3.connect(gateway.data_dir / "gateway.db", timeout=30) as db:
        return db.execute(
            "SELECT count(*) FROM usage_events WHERE request_id LIKE ?", (prefix + "%",)
        ).fetchone()[0]


def wait_for_rows(gateway: Process, prefix: str, n: int) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while (count := stored_rows(gateway, prefix)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def all_workers_ready(gateway: Process, n: int = 2) -> None:
    """The public port answers once one worker is up; the metrics port once all are."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            page = httpx.get(gateway.metrics_url, timeout=30).text
            if metric_sum(page, "gateway_server_workers") == n:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, gateway.log_text()
        time.sleep(0.05)


def chat_requests(text: str) -> float:
    return metric_sum(text, "gateway_requests_total", endpoint="chat.completions")


def test_two_workers_serve_one_port_and_count_every_request_once(tmp_path):
    with running(tmp_path, CONFIG, "--workers", "2", metrics_port=True) as gateway:
        all_workers_ready(gateway)
        assert len(gateway.children()) == 2
        # Each worker makes its own ids: two prefixes show up among generated request ids.
        prefixes = set()
        deadline = time.monotonic() + DEADLINE_S
        while len(prefixes) < 2 and time.monotonic() < deadline:
            prefixes.add(httpx.get(f"{gateway.url}/healthz").headers["x-request-id"][:16])
        assert len(prefixes) == 2

        prefix = f"workers-{uuid.uuid4().hex[:8]}"
        n = 60
        for i in range(n):
            chat(gateway.url, f"{prefix}-{i}")
        assert wait_for_rows(gateway, prefix, n) == n
        time.sleep(0.2)  # nothing more arrives: exactly n
        assert stored_rows(gateway, prefix) == n

        page = httpx.get(gateway.metrics_url, timeout=30)
        assert page.status_code == 200
        assert chat_requests(page.text) == n
        # Both workers answered the scrape: per-process series carry their worker.
        assert metric_sum(page.text, "process_resident_memory_bytes", worker="0") > 0
        assert metric_sum(page.text, "process_resident_memory_bytes", worker="1") > 0
        assert metric_sum(page.text, "gateway_server_workers", worker="supervisor") == 2
        assert httpx.get(f"{gateway.url}/metrics", headers=AUTH).status_code == 404


def test_a_dead_worker_is_replaced_and_its_counts_stay(tmp_path):
    with running(tmp_path, CONFIG, "--workers", "2", metrics_port=True) as gateway:
        all_workers_ready(gateway)
        prefix = f"restart-{uuid.uuid4().hex[:8]}"
        for i in range(10):
            chat(gateway.url, f"{prefix}-{i}")
        assert chat_requests(httpx.get(gateway.metrics_url, timeout=30).text) == 10

        before = gateway.children()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            page = httpx.get(gateway.metrics_url, timeout=30).text
            replaced = len(gateway.children() - before) == 1
            if replaced and metric_sum(page, "gateway_server_workers") == 2:
                break
            assert time.monotonic() < deadline, gateway.log_text()
            time.sleep(0.1)
        assert metric_sum(page, "gateway_server_worker_restarts_total") == 1
        # The dead worker's requests are still counted: the counter did not go back.
        assert chat_requests(page) == 10
        for i in range(5):
            chat(gateway.url, f"{prefix}-after-{i}")
        assert chat_requests(httpx.get(gateway.metrics_url, timeout=30).text) == 15


def test_sigterm_stops_the_supervisor_and_every_worker(tmp_path):
    with running(tmp_path, CONFIG, "--workers", "2", metrics_port=True) as gateway:
        all_workers_ready(gateway)
        workers = gateway.children()
        assert len(workers) == 2
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=DEADLINE_S) == 0
        for pid in workers:  # gone, and reaped by the supervisor
            assert not os.path.exists(f"/proc/{pid}")
        log = gateway.log_text()
        assert log.count("Application shutdown complete") == 2, log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gateway", "--workers", "2"], "--workers needs a metrics port"),
        (["auth", "--workers", "2", "--metrics-port", "1"], "auth runs as one process"),
        (["gateway", "--workers", "0", "--metrics-port", "1"], "--workers must be between 1 and 64"),
    ],
)
def test_workers_are_refused_where_they_cannot_work(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "services", *args],
        env=environment(tmp_path, CONFIG),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_sigterm_while_the_workers_start_stops_everything(tmp_path):
    port, mport = free_port(), free_port()
    command = [sys.executable, "-m", "services", "gateway", "--workers", "2"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--metrics-port", str(mport)],
        env=environment(tmp_path, CONFIG),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process = Process(proc, port, mport, tmp_path / "unused.log", tmp_path / "data")
        deadline = time.monotonic() + DEADLINE_S
        while len(workers := process.children()) < 2:
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0
        for pid in workers:
            assert not os.path.exists(f"/proc/{pid}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
