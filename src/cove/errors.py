"""The one exception tree of cove.

Every error cove raises on purpose is a ``CoveError``; each subclass has one
meaning and is mapped once, here, to an HTTP status, a CLI exit code and a CNI
error code::

    CoveError
    ├── InvalidArgument      bad input from a user or client           400 / exit 2
    ├── NotFound             the named thing does not exist             404 / exit 3
    ├── AlreadyExists        a thing by that name exists already        409 / exit 4
    ├── Conflict             the request clashes with current state     409 / exit 5
    │   └── InUse            the thing is still used by others          409 / exit 5
    ├── IpamExhausted        no free address or subnet is left          409 / exit 6
    ├── Unauthorized         the caller is not authenticated, or the    401 / exit 7
    │                        feature that would authenticate is off
    ├── PermissionDenied     the caller may not do this                 403 / exit 7
    ├── Unavailable          a feature or a dependency is not there     503 / exit 8
    ├── StoreError           the state store failed                     503 / exit 9
    │   ├── CasFailed        a compare-and-swap did not hold            409 / exit 9
    │   ├── StorageFull      the disk under the state is full           507 / exit 11
    │   └── WatchCompacted   a watch asked for history already gone     503 / exit 9
    ├── DatapathError        the kernel did not take a change           500 / exit 10
    │   ├── DatapathRefused  netlink or nftables refused a change       500 / exit 10
    │   ├── DatapathClosed   the handle asked to change it is closed    500 / exit 10
    │   └── DatapathGone     the namespace, link or bridge is gone      500 / exit 10
    ├── LaunchError          a container process could not be started   500 / exit 1
    │                        (kept by the supervisor as the container's
    │                        exit status: 126, 127 when the command is missing)
    ├── UpstreamFailed       an upstream DNS server gave no usable      503 / exit 8
    │                        answer (the forwarder tries the next one)
    └── HttpError            the HTTP server refuses a request before   its status / exit 2
                             any handler sees it (400, 413, 431, ...)
"""

from __future__ import annotations

import errno
import os
from typing import Any


class CoveError(Exception):
    """Base of every error cove raises on purpose.

    ``message`` is one line for a human; ``details`` carries structured
    fields (the offending name, subnet, ...) for API clients.
    """

    http_status = 500
    exit_code = 1
    cni_code = 999  # CNI: "generic failure"
    kind = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "kind": self.kind}
        if self.details:
            body["details"] = {k: str(v) for k, v in self.details.items()}
        return body


class InvalidArgument(CoveError):
    """Raised when input is malformed or out of range: a bad name, CIDR, port."""

    http_status = 400
    exit_code = 2
    cni_code = 7  # CNI: invalid network config
    kind = "invalid_argument"


class NotFound(CoveError):
    """Raised when a named network, container, service or key does not exist."""

    http_status = 404
    exit_code = 3
    cni_code = 3  # CNI: unknown container / network
    kind = "not_found"


class AlreadyExists(CoveError):
    """Raised when creating something whose name is taken."""

    http_status = 409
    exit_code = 4
    cni_code = 999
    kind = "already_exists"


class Conflict(CoveError):
    """Raised when a request is well-formed but clashes with the current state
    (an overlapping subnet, an address already allocated, a port in use)."""

    http_status = 409
    exit_code = 5
    cni_code = 999
    kind = "conflict"


class InUse(Conflict):
    """Raised when removing something that others still depend on."""

    kind = "in_use"


class IpamExhausted(CoveError):
    """Raised when a subnet or the default pool has no free address left."""

    http_status = 409
    exit_code = 6
    cni_code = 11  # CNI: try again later
    kind = "ipam_exhausted"


class Unauthorized(CoveError):
    """Raised when a request carries no usable credentials, or asks for an
    authentication feature that is switched off ("ACL support disabled")."""

    http_status = 401
    exit_code = 7
    cni_code = 999
    kind = "unauthorized"


class PermissionDenied(CoveError):
    """Raised when the caller lacks the right to do what it asked."""

    http_status = 403
    exit_code = 7
    cni_code = 999
    kind = "permission_denied"


class Unavailable(CoveError):
    """Raised when a kernel feature, program or peer that is needed is missing
    or cannot be reached (the agent is not running, etcd is down)."""

    http_status = 503
    exit_code = 8
    cni_code = 11
    kind = "unavailable"


class StoreError(CoveError):
    """Raised when the state store fails to read or write."""

    http_status = 503
    exit_code = 9
    cni_code = 11
    kind = "store_error"


class CasFailed(StoreError):
    """Raised when a compare-and-swap transaction's comparison did not hold.

    Callers that retry on contention catch exactly this.
    """

    http_status = 409
    kind = "cas_failed"


class StorageFull(StoreError):
    """Raised when a write is refused because the disk that holds the state
    (the SQLite file, the supervisor's records) is full. Nothing was
    changed; reads keep working, and writes work again once space is freed,
    without a restart."""

    http_status = 507  # Insufficient Storage
    exit_code = 11
    kind = "storage_full"


def storage_error(exc: OSError, path: str, what: str) -> StoreError:
    """The error for a write to the disk at ``path`` that failed with
    ``exc``: ``StorageFull`` naming the disk and the way out when it is
    out of space, ``StoreError`` otherwise."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            f"{what}: no space left on the disk holding {path}; free space there and retry"
            " (reads keep working meanwhile, no restart is needed)",
            path=path,
        )
    return StoreError(f"{what}: {os.strerror(exc.errno or 0)} ({path})", path=path)


class WatchCompacted(StoreError):
    """Raised by a watch whose start revision was compacted away; the
    watcher must re-read the current state and watch from its revision."""

    kind = "watch_compacted"


class DatapathError(CoveError):
    """Raised when a change to the kernel (netlink, nftables) did not
    happen, or did not converge in time; the subclasses say why when the
    code knows."""

    http_status = 500
    exit_code = 10
    cni_code = 999
    kind = "datapath_error"


class DatapathRefused(DatapathError):
    """Raised when netlink or nftables answered a change with an error
    (a rule nftables rejects, an address the kernel will not add)."""

    kind = "datapath_refused"


class DatapathClosed(DatapathError):
    """Raised when a change is asked of a datapath handle (an nftables
    context, a netlink socket) that was already closed: a shutdown race."""

    kind = "datapath_closed"


class DatapathGone(DatapathError):
    """Raised when the namespace, link or bridge a change names no longer
    exists (a container that exited, a bridge removed meanwhile); callers
    that observe or repair treat it as "nothing left to do"."""

    kind = "datapath_gone"


class LaunchError(CoveError):
    """Raised by the supervisor when a container's process could not be
    started (setup failed or timed out in the child); ``missing`` when its
    command does not exist. It never leaves the supervisor: the container
    is recorded as exited with 126 (127 when ``missing``)."""

    kind = "launch_error"

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class UpstreamFailed(Unavailable):
    """Raised inside the DNS forwarder when one upstream gave no usable
    answer (timeout, error rcode, garbage); the forwarder tries the next
    upstream and answers SERVFAIL when none answered."""

    kind = "upstream_failed"


class HttpError(CoveError):
    """Raised by the HTTP server's request parser for a request it refuses
    before any handler sees it; ``status`` (also ``http_status``) is the
    answer it sends before closing the connection."""

    exit_code = 2
    kind = "http_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.http_status = status


_BY_KIND: dict[str, type[CoveError]] = {
    cls.kind: cls
    for cls in (
        CoveError,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Conflict,
        InUse,
        IpamExhausted,
        Unauthorized,
        PermissionDenied,
        Unavailable,
        StoreError,
        CasFailed,
        StorageFull,
        WatchCompacted,
        DatapathError,
        DatapathRefused,
        DatapathClosed,
        DatapathGone,
        LaunchError,
        UpstreamFailed,
    )
}


def from_json(body: dict[str, Any]) -> CoveError:
    """Rebuild the error an API response carried (used by the CLI and CNI)."""
    cls = _BY_KIND.get(str(body.get("kind", "internal")), CoveError)
    details = body.get("details") or {}
    return cls(str(body.get("error", "unknown error")), **details)
