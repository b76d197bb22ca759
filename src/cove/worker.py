"""A background thread that does a level-triggered pass when kicked (a store
event) and every ``interval`` seconds anyway, the shape every watcher of the
agent shares."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cove.errors import CoveError

log = logging.getLogger(__name__)


class Worker:
    """Runs ``work(kicked)`` on its own thread: ``kicked`` is True for a pass
    asked for by ``kick()``, False for the periodic one. Errors are logged and
    the next pass retries; a pass never runs twice at once."""

    def __init__(self, name: str, work: Callable[[bool], object], interval: float) -> None:
        self._name = name
        self._work = work
        self._interval = interval
        self._cond = threading.Condition()
        self._kicked = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def kick(self) -> None:
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._kicked or self._stopping, self._interval)
                if self._stopping:
                    return
                kicked, self._kicked = self._kicked, False
            try:
                self._work(kicked)
            except CoveError as exc:
                log.error("%s pass failed: %s", self._name, exc.message)
            except Exception:  # the loop must outlive any one bug
                log.exception("%s pass crashed; retrying", self._name)
