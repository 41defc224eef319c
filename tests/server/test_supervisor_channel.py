"""The supervisor's side of a worker channel, against a worker end driven by the test over a
real socketpair: a late answer is skipped, not taken for the next scrape's."""

import asyncio
import socket

from services.kernel.server import FRAME, METRICS
from services.kernel.supervisor import Supervisor, Worker


def supervisor(scrape_timeout_s: float) -> Supervisor:
    listen = socket.socket()
    return Supervisor(
        workers=1,
        command=lambda *_: [],
        listen=listen,
        metrics=None,
        shutdown_timeout_s=1,
        scrape_timeout_s=scrape_timeout_s,
    )


async def test_an_answer_that_comes_late_is_dropped_by_the_next_scrape():
    boss = supervisor(scrape_timeout_s=0.2)
    mine, theirs = socket.socketpair()
    worker: Worker = boss.workers[0]
    worker.reader, worker.writer = await asyncio.open_unix_connection(sock=mine)
    worker.ready = True
    their_reader, their_writer = await asyncio.open_unix_connection(sock=theirs)
    try:
        first = asyncio.create_task(boss._ask(worker))
        assert await their_reader.readexactly(1) == METRICS
        assert await first is None  # no answer in time
        second = asyncio.create_task(boss._ask(worker))
        assert await their_reader.readexactly(1) == METRICS
        for page in (b"stale page\n", b"fresh page\n"):  # the late answer, then the new one
            their_writer.write(FRAME.pack(METRICS, len(page)) + page)
        await their_writer.drain()
        assert await second == b"fresh page\n"
        assert worker.owed == 0
        assert boss.scrape_failures._value.get() == 1
    finally:
        worker.writer.close()
        their_writer.close()
        boss.listen.close()
