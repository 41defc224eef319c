"""Embedded mode keeps every usage record across a shutdown: SIGTERM right after
the last answer, then count the rows in the SQLite file."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx

from tests.conftest import MASTER_KEY, free_port

CONFIG = """
usage: {flush_interval_ms: 5000}   # longer than the test: only the shutdown flush can store them
models:
  - name: mock-small
    deployments:
      - provider: mock
        model: mock-small
"""


def test_sigterm_flushes_every_usage_event_to_sqlite(tmp_path):
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")},
        "GATEWAY_CONFIG": str(tmp_path / "gateway.yaml"),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services", "gateway", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {MASTER_KEY}"}) as http:
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "gateway did not become ready"
                time.sleep(0.05)
            n = 40
            for i in range(n):
                body = {"model": "mock-small", "messages": [{"role": "user", "content": f"q{i}"}]}
                assert http.post("/v1/chat/completions", json=body).status_code == 200
            bad = http.post("/v1/chat/completions", json={"model": "nope", "messages": []})
            assert bad.status_code == 400
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as db:
        ok = db.execute("SELECT count(*) FROM usage_events WHERE status = 200").fetchone()[0]
        failed = db.execute("SELECT count(*) FROM usage_events WHERE status = 400").fetchone()[0]
    assert (ok, failed) == (n, 1)
