"""The in-process vector index (pure logic on numpy)."""

import numpy as np

from services.cache.index import NamespaceIndex, VectorIndex


def unit(seed, dims=384):
    v = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return v / np.linalg.norm(v)


def test_search_finds_the_nearest_within_the_namespace_only():
    index = VectorIndex()
    for i in range(50):
        index.add("ns-a", f"a{i}", unit(i), expires_at=1e12)
    index.add("ns-b", "b0", unit(7), expires_at=1e12)
    found = index.search("ns-a", unit(7), floor=0.5, k=3, now=0)
    assert [c.entry_id for c in found] == ["a7"]
    assert abs(found[0].similarity - 1.0) < 1e-5
    assert [c.entry_id for c in index.search("ns-b", unit(7), floor=0.5, k=3, now=0)] == ["b0"]
    assert index.search("ns-c", unit(7), floor=0.0, k=3, now=0) == []


def test_expired_rows_are_never_returned_and_sweep_removes_them():
    index = VectorIndex()
    index.add("ns", "old", unit(1), expires_at=100)
    index.add("ns", "new", unit(1), expires_at=300)
    assert [c.entry_id for c in index.search("ns", unit(1), floor=0.5, k=5, now=200)] == ["new"]
    assert index.sweep(now=200) == 1
    assert len(index) == 1


def test_remove_keeps_rows_consistent_and_add_is_idempotent():
    space = NamespaceIndex()
    for i in range(100):
        space.add(f"e{i}", unit(i), 1e12)
    space.add("e5", unit(5), 1e12)
    assert len(space) == 100
    for i in range(0, 100, 2):
        assert space.remove(f"e{i}")
    assert not space.remove("e0")
    assert len(space) == 50
    for i in range(1, 100, 2):
        top = space.search(unit(i), floor=0.99, k=1, now=0)
        assert [c.entry_id for c in top] == [f"e{i}"]


def test_empty_namespaces_disappear():
    index = VectorIndex()
    index.add("ns", "x", unit(1), 1e12)
    index.remove("ns", "x")
    assert index.spaces == {}
