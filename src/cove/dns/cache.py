"""The hot path's memory: encoded responses, ready to send.

An entry is a few pre-built variants of one response (different shuffles
of the answers, each cut to the A-record limit), each without its ID:
sending one is the query's ID plus the variant. Entries for EDNS and TCP
queries (keyed case-insensitively) also get the query's own spelling of the
question spliced in, so a client's 0x20 mixed case comes back as sent.

Tables are per scope (the host listener, or one set of container networks);
keys are built by ``plain_key``/``exact_key`` so that a key can only match
queries whose answer is byte-for-byte the same. Every entry records the
dependencies it was built from (see ``cove.dns.view``); ``invalidate`` drops
exactly those entries. A generation counter stops a slow-path answer that
raced an invalidation from being stored.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterable
from dataclasses import replace

from cove.dns.answer import Resolution
from cove.dns.view import ALL, Scope
from cove.dns.wire import FLAG_CD, FLAG_RD, Message, Query, Record, RRType, build_response

Variants = tuple[bytes, ...]
"""Always ``MAX_VARIANTS`` encoded responses without their ID (repeated when
there are fewer shuffles), so the I/O loop picks one with the query ID's low
bits: no counter, no modulo."""
Table = dict[bytes, Variants]

QD_ONLY = b"\x00\x01\x00\x00\x00\x00\x00\x00"
"""Header counts of a plain query: one question, nothing else."""

MAX_VARIANTS = 8  # a power of two: see ``pick``


def plain_key(data: bytes) -> bytes:
    """Key of a plain query (``QD_ONLY``, no EDNS) over UDP: the packet after
    its ID, exactly as received. A hit therefore means the same bytes as a
    query that was parsed and answered before, so the I/O loop needs no
    checks at all. (A client that randomises the case of names gets an entry
    per spelling; the cache's size bound covers that.)"""
    return data[2:]


def pick(variants: Variants, data: bytes) -> bytes:
    return variants[data[1] & (MAX_VARIANTS - 1)]


def exact_key(q: Query, limit: int) -> bytes:
    """Key of any other query (EDNS, TCP): flags that shape the answer, the
    size limit and the question lower-cased. Starts with 0xFF, which no
    ``plain_key`` does (its first byte has QR and opcode zero)."""
    flags = q.flags & (FLAG_RD | FLAG_CD)
    edns = 1 if q.edns is not None else 0
    return bytes((0xFF, edns)) + limit.to_bytes(2, "big") + flags.to_bytes(2, "big") + q.key


def encode_variants(
    q: Query, res: Resolution, *, limit: int, a_limit: int, rng: random.Random
) -> Variants:
    """Encode ``res`` for ``q``: one response, or up to ``MAX_VARIANTS``
    shuffles when the answer set may be permuted."""
    msg = res.message
    assert msg is not None
    count = 1
    if res.shuffle:
        count = min(MAX_VARIANTS, math.factorial(min(len(msg.answers), 5)))
    out: list[bytes] = []
    for i in range(count):
        answers = list(msg.answers)
        if i:
            rng.shuffle(answers)
        wire = build_response(q, _limited(msg, answers, a_limit), limit=limit)
        out.append(wire[2:])
    return tuple(out[i % count] for i in range(MAX_VARIANTS))


def _limited(msg: Message, answers: list[Record], a_limit: int) -> Message:
    if a_limit > 0:
        kept: list[Record] = []
        n = 0
        for rr in answers:
            if rr.rtype in (RRType.A, RRType.AAAA):
                n += 1
                if n > a_limit:
                    continue
            kept.append(rr)
        answers = kept
    return replace(msg, answers=tuple(answers))


def assemble(data: bytes, variants: Variants, question: bytes) -> bytes:
    """The answer to ``data`` from an entry keyed by ``exact_key``: the
    query's ID and its own spelling of the question."""
    v = pick(variants, data)
    n = len(question)
    return b"".join((data[:2], v[:10], question, v[10 + n :]))


class ResponseCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._tables: dict[Scope, Table] = {}
        self._deps: dict[str, set[tuple[Scope, bytes]]] = {}
        self._count = 0
        self._max = max_entries
        self.generation = 0

    def table(self, scope: Scope) -> Table:
        """The table of ``scope``; stable for the cache's life, so the I/O
        loop may hold it."""
        with self._lock:
            t = self._tables.get(scope)
            if t is None:
                t = self._tables[scope] = {}
            return t

    def insert(
        self, scope: Scope, key: bytes, variants: Variants, deps: Iterable[str], generation: int
    ) -> None:
        with self._lock:
            if generation != self.generation:
                return  # the view changed while this answer was being built
            if self._count >= self._max:
                self._clear_locked()
            table = self._tables.get(scope)
            if table is None:
                table = self._tables[scope] = {}
            table[key] = variants
            self._count += 1
            for d in deps:
                self._deps.setdefault(d, set()).add((scope, key))

    def invalidate(self, deps: Iterable[str]) -> None:
        with self._lock:
            self.generation += 1
            for d in deps:
                if d == ALL:
                    self._clear_locked()
                    return
                for scope, key in self._deps.pop(d, ()):
                    table = self._tables.get(scope)
                    if table is not None:
                        table.pop(key, None)

    def _clear_locked(self) -> None:
        for t in self._tables.values():
            t.clear()  # in place: the I/O loop holds these dicts
        self._deps.clear()
        self._count = 0

    def __len__(self) -> int:
        with self._lock:
            return sum(len(t) for t in self._tables.values())
