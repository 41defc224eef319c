"""A local file for usage events the stream could not take (Redis down).

Appends and replays lock the file, and an appender re-checks after locking that
the path still names the file it opened, so a replay that renamed it away cannot
swallow a concurrent append. Replays are safe to repeat: analytics dedupes on
`event_id`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "usage.jsonl"

    def append(self, events: Sequence[bytes]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = b"".join(e + b"\n" for e in events)
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    os.write(fd, data)
                    os.fsync(fd)
                    return
            finally:
                os.close(fd)

    def has_events(self) -> bool:
        return self.path.exists() or any(self.directory.glob("usage.replaying.*"))

    def take(self) -> tuple[Path | None, list[bytes]]:
        """Move the spool aside and return its events; `done(path)` after publishing them."""
        leftovers = sorted(self.directory.glob("usage.replaying.*"))
        if leftovers:
            claimed = leftovers[0]
        else:
            if not self.path.exists():
                return None, []
            claimed = self.directory / f"usage.replaying.{os.getpid()}"
            fd = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    os.rename(self.path, claimed)
                except FileNotFoundError:
                    return None, []
            finally:
                os.close(fd)
        lines = claimed.read_bytes().splitlines()
        return claimed, [line for line in lines if line.strip()]

    @staticmethod
    def done(path: Path) -> None:
        path.unlink(missing_ok=True)
