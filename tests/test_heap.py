"""``frozen_heap``: what the process holds before the first trial is out of the collector's scans while a study
runs, a trial's reference cycles are still freed after it, and the heap is given back as it was."""

from __future__ import annotations

import gc
import weakref

import torch

from sweeps.train import frozen_heap, release_memory


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def _cycle() -> weakref.ref:
    return weakref.ref(Node())


def test_old_garbage_is_collected_not_frozen_and_a_trials_cycles_are_freed() -> None:
    before = _cycle()  # garbage made before the study: the first collection frees it, it is never frozen
    with frozen_heap():
        assert before() is None
        assert gc.get_freeze_count() > 0  # the libraries, the context, ...: out of every later scan
        trial = _cycle()
        assert trial() is not None
        release_memory(torch.device("cpu"))
        assert trial() is None  # a trial's own cycles are still collected after it
    assert gc.get_freeze_count() == 0


def test_a_callers_frozen_heap_is_left_frozen() -> None:
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == count  # not unfrozen: that would undo the caller's own freeze
    finally:
        gc.unfreeze()


def test_the_heap_is_unfrozen_when_the_study_fails() -> None:
    try:
        with frozen_heap():
            raise RuntimeError("a trial failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
