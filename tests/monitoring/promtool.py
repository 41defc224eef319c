"""promtool (Debian package `prometheus`): `make test` installs it; without it, say what is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
GRAFANA = ROOT / "deploy" / "grafana" / "llm-gateway.json"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: install the Debian package `prometheus` (apt-get install prometheus);"
            " `make test` installs it when it runs as root"
        )
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
