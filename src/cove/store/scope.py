"""What an agent's watch covers, and the writes it waits for.

On etcd an agent need not hear of every key: another host's containers
and process states are that host's business. ``watched_ranges`` turns
"everything except these prefixes, plus these of them" into the key ranges
the hub watches (one etcd watch stream each)::

    watched_ranges(exclude=("containers/", "cluster/status/"),
                   include=("containers/h1/", "cluster/status/h1/"))
    # ["", "cluster/status/")  ["cluster/status0", "containers/")
    # ["containers0", ...)     "cluster/status/h1/"  "containers/h1/"

Streams are independent: one that carries nothing says nothing of how far
it has got, so "has the hub delivered revision R?" has no answer for a
quiet stream. What a pass needs to know is narrower: whether the hub has
delivered what *this agent* wrote (a request's write, which a pass then
compares with the kernel). ``NotingStore`` tells the hub the revision of
every write the agent makes that is sure to produce an event (a put; a
delete of a key whose presence the transaction checked), and the hub waits
for exactly those (``WatchHub.wait_for``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cove.errors import InvalidArgument
from cove.store.base import (
    UNBOUNDED,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Op,
    Put,
    Store,
    TxnResult,
)
from cove.store.proxy import StoreProxy


def after(prefix: str) -> str:
    """The first string after every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True, slots=True)
class KeyRange:
    """The keys from ``start`` up to ``end`` excluded (``UNBOUNDED``: no end)."""

    start: str
    end: str

    @classmethod
    def everything(cls) -> KeyRange:
        return cls("", UNBOUNDED)

    @classmethod
    def prefix(cls, prefix: str) -> KeyRange:
        if not prefix:
            return cls.everything()
        return cls(prefix, after(prefix))

    def __contains__(self, key: object) -> bool:
        return (
            isinstance(key, str) and key >= self.start and (self.end == UNBOUNDED or key < self.end)
        )

    def holds(self, prefix: str) -> bool:
        """Whether every key under ``prefix`` is in this range."""
        if not prefix:
            return self.start == "" and self.end == UNBOUNDED
        return prefix >= self.start and (self.end == UNBOUNDED or after(prefix) <= self.end)

    def overlaps(self, other: KeyRange) -> bool:
        below = other.end == UNBOUNDED or self.start < other.end
        above = self.end == UNBOUNDED or other.start < self.end
        return below and above


def watched_ranges(exclude: Sequence[str], include: Sequence[str]) -> list[KeyRange]:
    """The keyspace without the ``exclude`` prefixes, plus the ``include``
    prefixes (each inside an excluded one), as non-overlapping ranges."""
    excluded = sorted(set(exclude))
    for a, b in itertools.pairwise(excluded):
        if b.startswith(a):
            raise InvalidArgument(f"excluded prefixes overlap: {a!r} and {b!r}")
    if any(not p for p in excluded):
        raise InvalidArgument("cannot exclude the whole keyspace")
    out: list[KeyRange] = []
    start = ""
    for prefix in excluded:
        if prefix > start:
            out.append(KeyRange(start, prefix))
        start = after(prefix)
    out.append(KeyRange(start, UNBOUNDED))
    for prefix in sorted(set(include)):
        if not any(prefix.startswith(e) for e in excluded):
            raise InvalidArgument(f"an included prefix must lie in an excluded one: {prefix!r}")
        mine = KeyRange.prefix(prefix)
        if any(mine.overlaps(r) for r in out):
            raise InvalidArgument(f"included prefixes overlap: {prefix!r}")
        out.append(mine)
    return out


def _sure_deletes(compares: Sequence[Compare]) -> set[str]:
    """Keys the compares prove present (so deleting them makes an event)."""
    present: set[str] = set()
    for c in compares:
        if c.target is CompareTarget.VALUE or not isinstance(c.value, int):
            continue
        is_some = c.op is CompareOp.EQUAL and c.value > 0
        not_none = c.target is CompareTarget.VERSION and c.op is CompareOp.GREATER
        if is_some or (not_none and c.value >= 0):
            present.add(c.key)
    return present


def written_keys(compares: Sequence[Compare], ops: Sequence[Op]) -> list[str]:
    """The keys ``ops`` (a transaction branch that ran) surely changed."""
    sure = _sure_deletes(compares)
    out: list[str] = []
    for op in ops:
        sure_delete = isinstance(op, Delete) and not op.prefix and op.key in sure
        if isinstance(op, Put) or sure_delete:
            out.append(op.key)
    return out


Note = Callable[[Iterable[str], int], None]


class NotingStore(StoreProxy):
    """``store``, telling ``note(keys, revision)`` of each write that is
    sure to reach a watch (see the module docstring)."""

    def __init__(self, store: Store, note: Note) -> None:
        super().__init__(store)
        self._note = note

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        revision = self._store.put(key, value, lease=lease)
        self._note((key,), revision)
        return revision

    # ``delete``: whether it deleted anything is not known, so there is
    # nothing to wait for: the store's, as it is.

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        result = self._store.txn(compares, success, failure)
        ran = success if result.succeeded else failure
        keys = written_keys(compares if result.succeeded else (), ran)
        if keys:
            self._note(keys, result.revision)
        return result
