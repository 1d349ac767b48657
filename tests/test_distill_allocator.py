"""The CPU engine's C heap and garbage-collector settings are scoped to its work (issue 27)."""

from __future__ import annotations

import gc
import threading

from latentfl.distill import _allocator
from latentfl.distill._allocator import engine_heap


def test_engine_heap_nests_across_threads_and_is_undone():
    """Nested and concurrent uses open the settings once and restore them after the last."""
    inside = []
    frozen_before = gc.get_freeze_count()

    def work() -> None:
        with engine_heap(), engine_heap():
            inside.append(_allocator._open)

    with engine_heap():
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert _allocator._open == 1
        assert gc.get_freeze_count() > frozen_before  # the objects from before are not rescanned
    assert all(count >= 2 for count in inside) and len(inside) == 4
    assert _allocator._open == 0
    assert gc.get_freeze_count() == frozen_before == 0  # and collectable again after
