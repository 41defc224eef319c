import errno
import subprocess
import sys
from pathlib import Path

import pytest

from services.router.spool import Spool


def test_append_take_done(tmp_path):
    spool = Spool(tmp_path / "spool")
    assert not spool.has_events()
    assert spool.take() == (None, [])
    spool.append([b'{"a":1}', b'{"b":2}'])
    spool.append([b'{"c":3}'])
    assert spool.has_events()
    path, events = spool.take()
    assert events == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    # An append after the take goes to a fresh file, not into the one being replayed.
    spool.append([b'{"d":4}'])
    assert path is not None
    spool.done(path)
    _path2, events2 = spool.take()
    assert events2 == [b'{"d":4}']


def test_an_unfinished_replay_is_taken_again(tmp_path):
    spool = Spool(tmp_path)
    spool.append([b"x"])
    path, _ = spool.take()
    spool.append([b"y"])
    again, events = spool.take()  # the first replay never called done(): retried first
    assert again == path
    assert events == [b"x"]


def test_a_refused_append_raises_and_leaves_no_half_event(tmp_path):
    """A write cut short (file size limit here, a full disk in production) must not leave
    part of a line behind, nor pass for a success."""
    script = """
import resource, signal, sys
from pathlib import Path
from services.router.spool import Spool
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
spool = Spool(Path(sys.argv[1]))
spool.append([b"a" * 10])
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
try:
    spool.append([b"b" * 100])
except OSError as exc:
    print("refused", exc.errno)
else:
    print("accepted")
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["refused", str(errno.EFBIG)]
    _path, events = Spool(tmp_path).take()
    assert events == [b"a" * 10]


def test_a_full_disk_is_an_error_and_the_spool_stays_readable(tmp_path):
    (tmp_path / "usage.jsonl").symlink_to("/dev/full")
    spool = Spool(tmp_path)
    with pytest.raises(OSError, match="No space left") as exc:
        spool.append([b'{"a":1}'])
    assert exc.value.errno == errno.ENOSPC
