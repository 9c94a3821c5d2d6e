"""`heap.freeze`: the start-up heap leaves the collector; later garbage is still collected."""

from __future__ import annotations

import gc
import weakref

from ai_service import heap


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_frozen_objects_are_never_walked_and_later_cycles_are_still_freed() -> None:
    before = Node()
    try:
        heap.freeze()
        assert gc.get_freeze_count() > 0
        assert not any(before is o for o in gc.get_objects())  # out of every generation
        later = Node()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
