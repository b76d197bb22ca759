"""Blocking queries: wake a waiting reader only when what it reads changes.

A query names the store key prefixes its answer covers. ``Interests`` keeps,
per prefix, the revision of the last change seen under it and the futures
waiting on it; store events (from the WatchHub, on its thread) are handed to
the event loop and wake exactly the prefixes they fall under, so a query on
one service never wakes for another service's writes.

The last-change revision also carries deletions into the index: a delete
leaves no key whose mod revision could raise the answer's index, so the
index of an answer is the larger of its items' revisions and its prefixes'
last changes.

A query also ends early, with the answer it has, when the server is short
of connections and asks for the one it parks on back (``reclaimed``): as
Consul answers at its wait limit, so the client simply asks again later.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from cove.errors import InvalidArgument
from cove.registry import types as t
from cove.registry.queries import Answer
from cove.store.base import Event

log = logging.getLogger(__name__)

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
JITTER_FRACTION = 16  # Consul adds up to wait/16 so herds of clients spread out
MAX_INTERESTS = 100_000  # prefixes remembered; idle ones are forgotten past this


def parse_wait(raw: str | None) -> float:
    """Seconds a blocking query may wait: Consul's default 5 min, capped at
    10 min. A bare number is seconds, as Consul's ?wait accepts."""
    if raw is None or raw == "":
        return DEFAULT_WAIT
    try:
        seconds = float(raw) if raw.replace(".", "", 1).isdigit() else t.parse_duration(raw, "wait")
    except InvalidArgument as exc:
        raise InvalidArgument(f"Invalid wait time: {raw!r}") from exc
    if seconds < 0:
        raise InvalidArgument(f"Invalid wait time: {raw!r}")
    return min(seconds, MAX_WAIT)


def parse_index(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidArgument(f"Invalid index: {raw!r}") from exc
    if value < 0:
        raise InvalidArgument(f"Invalid index: {raw!r}")
    return value


def with_jitter(wait: float, rng: random.Random) -> float:
    return wait + rng.random() * wait / JITTER_FRACTION


@dataclass(slots=True)
class _Interest:
    revision: int = 0
    waiters: set[asyncio.Future[bool]] = field(default_factory=set)


def key_prefixes(key: str) -> list[str]:
    """The prefixes of ``key`` a query may watch: every ``/`` boundary, and
    for KV keys every character (a Consul KV prefix is any string)."""
    if key.startswith(t.KV):
        return [key[:i] for i in range(len(t.KV), len(key) + 1)]
    out = [key]
    i = key.find("/")
    while i >= 0:
        out.append(key[: i + 1])
        i = key.find("/", i + 1)
    return out


class Interests:
    """Prefixes that blocking queries watch; lives on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()  # made on the loop it serves
        self._by_prefix: dict[str, _Interest] = {}
        self.wakeups = 0  # futures woken, for the benchmark and tests

    def on_events_threadsafe(self, events: Sequence[Event]) -> None:
        """A WatchHub callback from any thread. On the loop's own thread (an
        inline subscriber called by a write the API committed) the waiters
        wake at once; from another thread the batch is handed to the loop."""
        if threading.get_ident() == self._loop_thread:
            self.on_events(events)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.on_events, list(events))

    def on_events(self, events: Sequence[Event]) -> None:
        interests = self._by_prefix
        if not interests:  # no query has run yet: nothing to wake or date
            return
        for ev in events:
            rev = ev.kv.mod_revision
            for prefix in key_prefixes(ev.kv.key):
                found = interests.get(prefix)
                if found is None:
                    continue
                found.revision = max(found.revision, rev)
                for fut in found.waiters:
                    if not fut.done():
                        fut.set_result(True)
                        self.wakeups += 1
                found.waiters.clear()

    def watch(self, prefixes: Sequence[str]) -> int:
        """Start tracking ``prefixes``; their last-change revision so far."""
        if len(self._by_prefix) > MAX_INTERESTS:
            # Forgetting an idle prefix loses only the revision of a past
            # delete under it; blocked clients keep theirs (they have waiters).
            self._by_prefix = {p: i for p, i in self._by_prefix.items() if i.waiters}
        rev = 0
        for p in prefixes:
            rev = max(rev, self._by_prefix.setdefault(p, _Interest()).revision)
        return rev

    def changed_since(self, prefixes: Sequence[str]) -> int:
        return max(
            (self._by_prefix[p].revision for p in prefixes if p in self._by_prefix), default=0
        )

    async def wait(
        self,
        prefixes: Sequence[str],
        timeout: float,
        reclaimed: asyncio.Future[None] | None = None,
    ) -> bool:
        """Wait until something under ``prefixes`` changes; False on timeout
        or when ``reclaimed`` is done first."""
        fut: asyncio.Future[bool] = self._loop.create_future()

        def give_up(_: asyncio.Future[None]) -> None:
            if not fut.done():
                fut.set_result(False)

        if reclaimed is not None:
            reclaimed.add_done_callback(give_up)
        for p in prefixes:
            self._by_prefix.setdefault(p, _Interest()).waiters.add(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return False
        finally:
            if reclaimed is not None:
                reclaimed.remove_done_callback(give_up)
            for p in prefixes:
                found = self._by_prefix.get(p)
                if found is not None:
                    found.waiters.discard(fut)
            if not fut.done():
                fut.cancel()


async def blocking_read(
    interests: Interests,
    read: Callable[[], Awaitable[Answer]],
    min_index: int,
    wait: float,
    *,
    prefixes_hint: Sequence[str] = (),
    rng: random.Random | None = None,
    reclaimed: asyncio.Future[None] | None = None,
) -> Answer:
    """Run ``read`` until its index passes ``min_index``, ``wait`` (plus
    jitter) runs out or ``reclaimed`` is done; the answer's index includes
    the last changes under its prefixes. With ``min_index`` 0 this is one
    plain read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (with_jitter(wait, rng or random.Random()) if min_index else 0.0)
    interests.watch(prefixes_hint)
    while True:
        answer = await read()
        seen = interests.watch(answer.prefixes)
        if seen > answer.revision:
            # A change arrived between the read and now: read again, or the
            # index would claim data the answer does not hold.
            continue
        index = max(answer.index, seen, 1)
        answer = replace(answer, index=index)
        remaining = deadline - loop.time()
        if not min_index or index > min_index or remaining <= 0:
            return answer
        if reclaimed is not None and reclaimed.done():
            return answer
        if min_index > answer.revision:
            # The client's index is from the future (another store, a
            # restart): Consul answers at once so it can reset.
            return answer
        if not await interests.wait(answer.prefixes, remaining, reclaimed):
            return answer
