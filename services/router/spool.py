"""A local file for usage events the stream could not take (Redis down).

Appends and replays lock the file, and an appender re-checks after locking that
the path still names the file it opened, so a replay that renamed it away cannot
swallow a concurrent append. Replays are safe to repeat: analytics dedupes on
`event_id`.

An append either lands whole (written and fsynced) or raises and leaves the file as
it was: a write cut short by a full disk is undone, so the caller can keep the
events and try again without a half line in the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Generator, Sequence
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
                    _write_whole(fd, data)
                    return
            finally:
                os.close(fd)

    def has_events(self) -> bool:
        """A spool file with something in it, or a claimed one whose replay did not finish."""
        return _holds_data(self.path) or any(self.directory.glob("usage.replaying.*"))

    def claim(self) -> Path | None:
        """Move the spool aside for replay (or return a file an unfinished replay left);
        read it with `batches`, then call `done(path)`. New appends go to a fresh file."""
        leftovers = sorted(self.directory.glob("usage.replaying.*"))
        if leftovers:
            return leftovers[0]
        if not _holds_data(self.path):
            return None
        claimed = self.directory / f"usage.replaying.{os.getpid()}"
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.rename(self.path, claimed)
            except FileNotFoundError:
                return None
        finally:
            os.close(fd)
        return claimed

    @staticmethod
    def batches(path: Path, size: int) -> Generator[list[bytes], None, None]:
        """The events of a claimed file, `size` at a time, read as they are needed: a
        spool written through a long outage is never held in memory whole."""
        with path.open("rb") as f:
            batch: list[bytes] = []
            for line in f:
                event = line.rstrip(b"\n")
                if event.strip():
                    batch.append(event)
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def take(self) -> tuple[Path | None, list[bytes]]:
        """`claim`, then every event at once (for small spools and tests)."""
        path = self.claim()
        if path is None:
            return None, []
        return path, [event for batch in self.batches(path, 4096) for event in batch]

    @staticmethod
    def done(path: Path) -> None:
        path.unlink(missing_ok=True)


def _write_whole(fd: int, data: bytes) -> None:
    """Append all of `data` and fsync, or truncate back and raise. Call under the lock."""
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            # A short count is how a disk that fills mid-write answers first; the
            # next write then raises ENOSPC (or EFBIG at a file size limit).
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):  # a device (/dev/full) cannot be truncated
            os.ftruncate(fd, start)
        raise


def _holds_data(path: Path) -> bool:
    """A regular file, not empty (a device or an empty file holds no events)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0
