"""How many connections the server keeps at once, and how they are sized.

Every connection costs a descriptor, and descriptors are shared with
everything else the agent does: the Unix socket the administrator's CLI
uses, the store, DNS over TCP, container logs, netlink. A flood of TCP
clients that took them all (issue 17: 1,100 connections under a limit of
1024) locked root out of the CLI and broke DNS. So TCP (and TLS)
connections are capped in total and per client address, below the
open-file limit with a reserve kept for the rest; the Unix socket has a
budget of its own, inside that reserve, that TCP load never touches. A
connection beyond a cap is answered 503 with ``Retry-After`` and closed at
once, so it gives its descriptor straight back.
"""

from __future__ import annotations

from dataclasses import dataclass

from cove.errors import InvalidArgument

DEFAULT_PER_CLIENT = 200  # Consul's limits.http_max_conns_per_client
MIN_RESERVE = 256  # descriptors kept for the store, DNS, containers, netlink
RETRY_AFTER = 5  # seconds a refused client is asked to wait


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Caps on open connections; 0 means no cap."""

    tcp_total: int = 0  # TCP and TLS together
    tcp_per_client: int = 0  # per client IP address
    unix_total: int = 0
    retry_after: int = RETRY_AFTER


NO_LIMITS = ConnectionLimits()


def limits_for(
    open_files: int, *, max_conns: int = 0, per_client: int = DEFAULT_PER_CLIENT
) -> ConnectionLimits:
    """The caps for a process allowed ``open_files`` descriptors.

    A quarter of the limit (at least ``MIN_RESERVE``) is kept back; TCP gets
    three quarters of what remains, the Unix socket half of the reserve.
    ``max_conns`` (0: sized so) and ``per_client`` (0: no per-client cap)
    come from the agent's config; a ``max_conns`` above what the limit
    allows is lowered to it, since going past it is what broke the CLI.

    Raises ``InvalidArgument`` for a negative setting.
    """
    if max_conns < 0 or per_client < 0:
        raise InvalidArgument("http_max_conns and http_max_conns_per_client must be 0 or more")
    reserve = max(MIN_RESERVE, open_files // 4)
    room = max(16, (open_files - reserve) * 3 // 4)
    total = min(max_conns, room) if max_conns else room
    return ConnectionLimits(
        tcp_total=total,
        tcp_per_client=min(per_client, total) if per_client else 0,
        unix_total=max(16, reserve // 2),
    )
