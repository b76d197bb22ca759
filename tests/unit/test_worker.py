"""The shared watcher loop: kicked passes, periodic passes, errors survived."""

from __future__ import annotations

import threading
import time

from cove.errors import DatapathError
from cove.worker import Worker


def test_kicks_periodic_passes_and_errors() -> None:
    seen: list[bool] = []
    done = threading.Event()

    def work(kicked: bool) -> None:
        seen.append(kicked)
        if len(seen) == 1:
            raise DatapathError("first pass fails")  # logged; the loop goes on
        if len(seen) >= 3:
            done.set()

    worker = Worker("test-worker", work, interval=0.05)
    worker.start()
    try:
        worker.kick()
        assert done.wait(5), seen
    finally:
        worker.stop()
    assert seen[0] is True  # the kick
    assert False in seen  # a periodic pass came without one
    count = len(seen)
    time.sleep(0.2)
    assert len(seen) == count  # stopped means stopped


def test_a_failed_kicked_pass_is_retried_as_a_kicked_pass() -> None:
    # A kick means "the store changed: read it". A pass that failed to read
    # (the store away) must be retried as such, not as a periodic pass that
    # may reuse what it read before the change.
    seen: list[bool] = []
    done = threading.Event()

    def work(kicked: bool) -> None:
        seen.append(kicked)
        if len(seen) <= 2:
            raise DatapathError("the store is away")
        if len(seen) >= 4:
            done.set()

    worker = Worker("test-worker", work, interval=0.05, retry=0.01)
    worker.start()
    try:
        worker.kick()
        assert done.wait(5), seen
    finally:
        worker.stop()
    assert seen[:4] == [True, True, True, False]  # owed until done, then periodic
