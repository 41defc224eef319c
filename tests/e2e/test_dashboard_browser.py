"""The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by
playwright-core (npm, pinned in tests/browser/package-lock.json) loads /dashboard from a
gateway that has served real requests, logs in with the key, and must show that data:
the totals of the summary API, charts drawn from the usage series, the service targets
as green/red tiles. The screenshot is kept in tests/browser/output/dashboard.png."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import MASTER_KEY, usage_events, user

BROWSER = Path(__file__).resolve().parents[1] / "browser"
CHROMIUM = "/usr/bin/chromium"


def browser_ready() -> None:
    """Install playwright-core from the lock file if needed; fail naming what is missing."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if missing:
        pytest.fail(
            f"the browser test needs {', '.join(missing)}: apt-get install nodejs npm chromium"
            " (`make test` installs chromium when it runs as root)"
        )
    if not (BROWSER / "node_modules" / "playwright-core").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            pytest.fail(
                f"npm ci in tests/browser failed (playwright-core from the npm registry):\n{done.stderr}"
            )


async def test_dashboard_shows_what_the_gateway_served(gateway, http):
    browser_ready()
    tag = uuid.uuid4().hex[:10]
    ids = []
    for i in range(5):
        headers = {"x-request-id": f"dash-{tag}-{i}"}
        stream = i % 2 == 1
        body = {"model": "mock-small", "messages": user(f"dashboard {i}"), "stream": stream}
        assert (await http.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
        ids.append(headers["x-request-id"])
    failed = {"x-request-id": f"dash-{tag}-err"}
    body = {"model": "up-error-500", "messages": user("x")}
    assert (await http.post("/v1/chat/completions", json=body, headers=failed)).status_code == 502
    for request_id in [*ids, failed["x-request-id"]]:
        assert await usage_events(http, request_id), request_id  # stored, so the roll-ups have it
    summary = (await http.get("/analytics/v1/stats/summary")).json()
    assert summary["requests"] >= 6
    assert summary["server_errors"] >= 1

    output = BROWSER / "output"
    output.mkdir(exist_ok=True)
    screenshot = output / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DASHBOARD_URL": f"{gateway.url}/dashboard",  # redirects to /analytics/dashboard
        "DASHBOARD_KEY": MASTER_KEY,
        "SCREENSHOT": str(screenshot),
        "CHROMIUM": CHROMIUM,
    }
    proc = await asyncio.create_subprocess_exec(
        "node", str(BROWSER / "dashboard.mjs"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    shown = result["shown"]

    assert result["loginShown"], "the page must ask for the key before showing anything"
    assert result["errors"] == []
    # The totals are the summary API's (no request ran in between).
    assert shown["requests"] == f"{summary['requests']:,}"
    assert shown["tokens"] == f"{summary['total_tokens']:,}"
    # Each service target is a tile coloured by whether it is met.
    for name, key in (
        ("availability", "availability"),
        ("latency", "latency_p99_ms"),
        ("cache", "cache_hit_rate"),
    ):
        met = summary["targets"][key]["met"]
        tile = shown["targets"][name]
        assert tile["met"] == ("null" if met is None else str(met).lower()), (name, tile)
        assert ("met" if met else "missed" if met is False else "unknown") in tile["cls"].split()
    assert "missed" in shown["targets"]["availability"]["cls"]  # a 502 among few requests: < 99.9%

    charts = shown["charts"]
    requests_chart = charts["chart-requests"]
    assert [d["label"] for d in requests_chart["datasets"]] == ["requests", "errors"]
    assert sum(p["y"] for p in requests_chart["datasets"][0]["data"]) == summary["requests"]
    assert len(requests_chart["datasets"][0]["data"]) in (24, 25)  # every hour, empty ones at 0
    assert any(p["y"] for p in charts["chart-latency"]["datasets"][2]["data"] if p["y"] is not None)
    assert sum(p["y"] for p in requests_chart["datasets"][1]["data"]) >= 1
    assert [d["label"] for d in charts["chart-latency"]["datasets"]] == ["p50", "p95", "p99"]
    assert "mock-small" in charts["chart-models"]["labels"]
    assert "up-error-500" in charts["chart-errors"]["labels"]
    assert "master" in charts["chart-keys"]["labels"]
    assert all(c is not None and c["height"] > 0 for c in charts.values()), charts.keys()

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000
