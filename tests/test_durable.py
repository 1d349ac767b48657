"""Crash-safe writes (latentfl.durable) on a real filesystem."""

from __future__ import annotations

import multiprocessing

from latentfl.durable import write_atomic_many


def test_group_writes_work_in_a_child_forked_after_the_parent_made_some(tmp_path):
    """A child forked once the parent's group writes started the fsync threads still writes
    (with threads of its own: it has none of the parent's to queue work for)."""
    write_atomic_many([(tmp_path / "a", b"1"), (tmp_path / "b", b"2")])
    child = multiprocessing.get_context("fork").Process(
        target=write_atomic_many, args=([(tmp_path / "c", b"3"), (tmp_path / "d", b"4")],))
    child.start()
    child.join(30)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung and child.exitcode == 0
    assert [(tmp_path / n).read_bytes() for n in "abcd"] == [b"1", b"2", b"3", b"4"]
