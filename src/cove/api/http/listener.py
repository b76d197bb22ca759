"""Which listener a request came on: what decides what it may reach.

The Unix socket is guarded by file permissions (root, or the group the
admin names), so the native API answers there; a TCP port can be reached by
every local user and, through a browser, by every web page, so requests on
TCP and TLS pass the checks in ``cove.api.guard`` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Transport(StrEnum):
    UNIX = "unix"
    TCP = "tcp"
    TLS = "tls"


@dataclass(frozen=True, slots=True)
class Listener:
    transport: Transport
    host: str = ""  # the bound address (tcp, tls)
    port: int = 0  # the bound port (tcp, tls)
    path: str = ""  # the socket's path (unix)

    @property
    def scheme(self) -> str:
        return "https" if self.transport is Transport.TLS else "http"


UNIX = Listener(Transport.UNIX)
