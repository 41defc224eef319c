"""Ids stay unique across processes: a forked child does not repeat its parent's prefix."""

import os

from services.kernel.ids import new_id, process_prefix


def test_a_forked_child_draws_its_own_prefix():
    parent = process_prefix()
    assert new_id().startswith(parent)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its prefix and first id, then leave at once
        try:
            os.write(write, f"{process_prefix()} {new_id()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_prefix, child_id = pipe.read().split()
    os.waitpid(pid, 0)
    assert child_prefix != parent
    assert child_id.startswith(child_prefix)
    assert child_id.endswith("000000000001")  # its counter starts over too
