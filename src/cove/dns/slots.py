"""Who may hold a DNS-over-TCP connection: a share per listener and per
client, inside one total, so a container that opens many slow connections to
its own gateway uses up its own share only, never the host's or another
network's (each TCP connection costs a thread and a descriptor)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SlotLimits:
    total: int = 256
    per_listener: int = 64
    per_client: int = 8


class TcpSlots:
    """Counts held connections; ``take`` is False when any share is full."""

    def __init__(self, limits: SlotLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._total = 0
        self._listeners: Counter[int] = Counter()
        self._clients: Counter[tuple[int, str]] = Counter()

    def take(self, listener: int, client: str) -> bool:
        with self._lock:
            if (
                self._total >= self.limits.total
                or self._listeners[listener] >= self.limits.per_listener
                or self._clients[(listener, client)] >= self.limits.per_client
            ):
                return False
            self._total += 1
            self._listeners[listener] += 1
            self._clients[(listener, client)] += 1
            return True

    def give_back(self, listener: int, client: str) -> None:
        with self._lock:
            self._total -= 1
            self._listeners[listener] -= 1
            if self._listeners[listener] <= 0:
                del self._listeners[listener]
            key = (listener, client)
            self._clients[key] -= 1
            if self._clients[key] <= 0:
                del self._clients[key]

    @property
    def held(self) -> int:
        with self._lock:
            return self._total
