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
