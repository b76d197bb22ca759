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
    a pass retries after ``retry`` seconds (``interval`` when None), as a
    kicked pass if a kicked one failed (what the kick asked for is still
    owed); a pass never runs twice at once. With ``settle``, a kicked pass starts that many
    seconds after the kick (unless ``kick(now=True)``), so a burst of store
    changes costs one pass, run after the writers are done, not during."""

    def __init__(
        self,
        name: str,
        work: Callable[[bool], object],
        interval: float,
        retry: float | None = None,
        settle: float = 0.0,
    ) -> None:
        self._name = name
        self._work = work
        self._interval = interval
        self._retry = interval if retry is None else retry
        self._settle = settle
        self._cond = threading.Condition()
        self._kicked = False
        self._now = False
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

    def kick(self, now: bool = False) -> None:
        with self._cond:
            self._kicked = True
            self._now = self._now or now
            self._cond.notify_all()

    def _loop(self) -> None:
        wait = self._interval
        owed = False  # a kicked pass failed: its retry is a kicked pass too
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._kicked or self._stopping, wait)
                if self._kicked and self._settle > 0 and not self._now:
                    self._cond.wait_for(lambda: self._now or self._stopping, self._settle)
                if self._stopping:
                    return
                kicked, self._kicked, self._now = self._kicked or owed, False, False
            wait, owed = self._retry, kicked
            try:
                self._work(kicked)
            except CoveError as exc:
                log.error("%s pass failed: %s", self._name, exc.message)
            except Exception:  # the loop must outlive any one bug
                log.exception("%s pass crashed; retrying", self._name)
            else:
                wait, owed = self._interval, False


class Progress:
    """The store revision a worker's passes have brought into the kernel, and
    a way to wait for one: callers (the API) answer a write only once the
    kernel holds it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._revision = 0

    @property
    def revision(self) -> int:
        return self._revision

    def mark(self, revision: int) -> None:
        with self._cond:
            if revision > self._revision:
                self._revision = revision
                self._cond.notify_all()

    def wait(self, revision: int, timeout: float, kick: Callable[[], None]) -> bool:
        """True once ``revision`` is applied. A pass that already covered it
        is not repeated; otherwise ``kick`` asks for one (the store event
        would too, later)."""
        with self._cond:
            if self._revision >= revision:
                return True
        kick()
        with self._cond:
            return self._cond.wait_for(lambda: self._revision >= revision, timeout=timeout)
