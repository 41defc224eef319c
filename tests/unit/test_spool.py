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
