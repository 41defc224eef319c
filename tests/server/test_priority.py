"""How the analytics process lowers its CPU priority (analytics.cpu_policy), each policy
applied in a fresh interpreter and read back from the kernel."""

import os
import subprocess
import sys

import pytest

PROBE = """
import os
from services.__main__ import _lower_priority
_lower_priority({policy!r}, {nice})
print(os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
"""


def applied(policy: str, nice: int) -> tuple[int, int]:
    """(scheduling policy, nice value) of a process after `_lower_priority(policy, nice)`."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(policy=policy, nice=nice)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return int(out[0]), int(out[1])


BASE = os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.parametrize(
    ("policy", "nice", "expected"),
    [
        ("idle", 10, (os.SCHED_IDLE, BASE)),
        ("nice", 10, (os.SCHED_OTHER, min(19, BASE + 10))),
        ("nice", 0, (os.SCHED_OTHER, BASE)),
        ("normal", 10, (os.SCHED_OTHER, BASE)),
    ],
)
def test_each_policy_is_what_the_kernel_reports(policy, nice, expected):
    assert applied(policy, nice) == expected
