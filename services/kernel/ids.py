"""Cheap unique ids for the hot path: a random per-process prefix and a counter.

64 random bits per process make a clash between processes negligible, and the
counter never repeats within one; a fraction of the cost of `uuid.uuid4()`.
A forked child draws a prefix of its own: it would otherwise repeat its
parent's ids, counter included. (Workers started by `python -m services
--workers N` are new interpreters and draw theirs at import.)
"""

from __future__ import annotations

import itertools
import os
import secrets

_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count(1)


def _reseed() -> None:
    global _PREFIX, _COUNTER
    _PREFIX = secrets.token_hex(8)
    _COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    return f"{_PREFIX}{next(_COUNTER):012x}"


def process_prefix() -> str:
    """This process's prefix: every id it makes starts with it."""
    return _PREFIX
