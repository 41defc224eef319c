"""Server-sent events: splitting a byte stream into events, and writing them."""

from __future__ import annotations

import orjson

DONE = b"data: [DONE]\n\n"


def frame(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class EventSplitter:
    """Feed bytes as they arrive; get back complete events (without the blank line)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = buf.split(b"\n\n")
        self._buf = events.pop()
        return [e for e in events if e]

    def rest(self) -> bytes:
        return self._buf


def data_of(event: bytes) -> bytes | None:
    """The joined `data:` lines of one event, or None for comment-only events."""
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None
