"""Who may reach what, by listener: the checks every request passes before
routing.

The native API (``/api``) runs root containers, so it answers on the Unix
socket (guarded by its file mode and group) and, over TCP, only with TLS and
a token the ``NativeGate`` approves; on plain TCP it is refused outright.
Every TCP and TLS listener also defends against web pages, which can reach
loopback ports from any browser on the host:

- ``Host`` must name the listener (an address of it, ``localhost`` on
  loopback, or a configured name), else 421: a DNS-rebound page sends its
  own name as ``Host``.
- A state-changing request whose ``Origin`` is not the listener's own is
  refused (403): browsers send ``Origin`` on every cross-site POST, PUT,
  PATCH and DELETE.
- Bodies that must be JSON say so (415 otherwise), and ``/v1`` refuses the
  content types a page may send without a CORS preflight (``text/plain``,
  ``multipart/form-data``), except KV values and event payloads, which are
  raw bytes.

Each refusal is a JSON ``{"error", "kind"}`` answer naming what is wrong and
the way out; the request reaches no handler, so nothing changes.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cove.api import http as web
from cove.api.http import Transport

NativeGate = Callable[[str | None, bool], bool]
"""Whether a request to ``/api`` over TLS may proceed: called with the
request's token (``X-Consul-Token``, ``Authorization: Bearer`` or
``?token=``; None when absent) and whether the request writes (any method
but GET and HEAD). The ACL system provides the real one: operator write for
writes, operator read for reads."""


def refuse_without_acls(token: str | None, is_write: bool) -> bool:
    """The gate while no ACL system is wired: nothing passes."""
    return False


_STATE_CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
_SIMPLE_FORM_TYPES = ("text/plain", "multipart/form-data")
# /v1 routes whose PUT body is raw bytes (a KV value, a user event's payload).
_RAW_BODY_PATHS = ("/v1/kv/", "/v1/event/fire/")
_HOST_CACHE_MAX = 256


def request_token(request: web.Request) -> str | None:
    """The ACL token a request presents, as Consul reads it."""
    token = request.headers.get("x-consul-token")
    if token:
        return str(token)
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = str(auth).partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if "token=" in request.query_string:
        query_token = request.query.get("token")
        if query_token:
            return str(query_token)
    return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` as (host, port or None); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif ":" in value:  # a bare IPv6 address is not a valid Host
        return None
    else:
        host, port_text = value, ""
    if not host:
        return None
    if not port_text:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    return host, int(port_text)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_local_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``addr`` is one of this host's (network namespace's)
    addresses: only a local address can be bound."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((str(addr), 0))
    except OSError:  # EADDRNOTAVAIL mostly; whatever it is, the Host is not proven ours
        return False
    return True


@dataclass(slots=True)
class Guard:
    """The screen the agent installs on its app (see the module docstring).

    ``allowed_hosts``: extra names a ``Host`` header may carry (a name the
    admin points at the agent). ``socket_path``: named in refusals as the way
    to the native API. ``gate``: decides native requests over TLS.
    """

    socket_path: str = "/run/cove/agent.sock"
    allowed_hosts: frozenset[str] = frozenset()
    gate: NativeGate = refuse_without_acls
    is_local: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool] = is_local_address
    _hosts_ok: dict[int, tuple[web.Listener, dict[str, bool]]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        socket_path: str,
        allowed_hosts: Iterable[str] = (),
        gate: NativeGate = refuse_without_acls,
    ) -> Guard:
        return cls(socket_path, frozenset(h.lower() for h in allowed_hosts), gate)

    def __call__(self, request: web.Request) -> web.StreamResponse | None:
        listener = request.listener
        if listener.transport is Transport.UNIX:
            return None
        headers = request.headers.lowered
        host = headers.get("host")
        if host is None:
            if request.version >= (1, 1):
                return _refuse(
                    400,
                    "invalid_argument",
                    "an HTTP/1.1 request needs a Host header naming the agent",
                )
            # HTTP/1.0 clients may omit it; browsers never do.
        elif not self._host_ok(host, listener):
            return _refuse(
                421,
                "invalid_argument",
                f"Host {host[:100]!r} does not name this agent: use one of its addresses "
                "(or localhost on loopback), or allow the name with --http-allowed-host",
            )
        method = request.method
        if method in _STATE_CHANGING:
            origin = headers.get("origin")
            if origin is not None and not _own_origin(listener.scheme, host or "", origin):
                return _refuse(
                    403,
                    "permission_denied",
                    f"cross-site request refused: Origin {origin[:100]!r} is not this "
                    f"listener's own ({listener.scheme}://{host or ''}); send the request "
                    "without an Origin header or from the agent's own origin",
                )
        path = request.raw_path
        if path.startswith("/api") and (len(path) == 4 or path[4] == "/"):
            return self._check_native(request, method not in ("GET", "HEAD"))
        ctype = headers.get("content-type")
        if (
            ctype is not None
            and path.startswith("/v1/")
            and not ctype.startswith("application/json")
            and _media_type(ctype) in _SIMPLE_FORM_TYPES
            and request.content_length
            and not (method == "PUT" and path.startswith(_RAW_BODY_PATHS))
        ):
            return _refuse(
                415,
                "invalid_argument",
                f"Content-Type {_media_type(ctype)} is not accepted on /v1 (browsers send it "
                "cross-site without asking): send application/json, or no Content-Type",
            )
        return None

    def _host_ok(self, host: str, listener: web.Listener) -> bool:
        # Per listener, by identity: hashing the frozen Listener on every
        # request would cost more than the whole check.
        known = self._hosts_ok.get(id(listener))
        if known is None or known[0] is not listener:
            known = (listener, {})
            self._hosts_ok[id(listener)] = known
        ok = known[1].get(host)
        if ok is None:
            ok = self._host_names_listener(host, listener)
            if len(known[1]) >= _HOST_CACHE_MAX:  # any Host may be sent: bound the memory
                known[1].clear()
            known[1][host] = ok
        return ok

    def _host_names_listener(self, raw: str, listener: web.Listener) -> bool:
        parsed = split_host(raw)
        if parsed is None:
            return False
        host, port = parsed
        if port is not None and port != listener.port:
            return False
        if host in self.allowed_hosts:
            return True
        bound = _address(listener.host)
        if bound is None:  # bound by name: only that name (and the allowed ones)
            return host == listener.host.lower()
        wildcard = bound.is_unspecified
        if host == "localhost":
            return bound.is_loopback or wildcard
        addr = _address(host)
        if addr is None:
            return False
        if addr == bound:
            return True
        if addr.is_loopback:
            return bound.is_loopback or wildcard
        return wildcard and not addr.is_unspecified and self.is_local(addr)

    def _check_native(self, request: web.Request, writes: bool) -> web.StreamResponse | None:
        listener = request.listener
        if listener.transport is Transport.TCP:
            return _refuse(
                403,
                "permission_denied",
                "the native API (/api) is not served on plain TCP: use the Unix socket "
                f"{self.socket_path} (cove --socket), or the agent's --https listener "
                "with an ACL token granting operator write",
            )
        if (
            request.content_length
            and _media_type(request.headers.lowered.get("content-type")) != "application/json"
        ):
            return _refuse(
                415,
                "invalid_argument",
                "the native API takes JSON bodies: send Content-Type: application/json",
            )
        if self.gate(request_token(request), writes):
            return None
        return _refuse(
            403,
            "permission_denied",
            "the native API over HTTPS needs an ACL token with operator "
            f"{'write' if writes else 'read'}: enable ACLs (--acl-enabled) and present a token "
            "with operator write (X-Consul-Token, Authorization: Bearer or cove --token), "
            f"or use the Unix socket {self.socket_path}",
        )


def _own_origin(scheme: str, host: str, origin: str) -> bool:
    host = host.lower()
    origin = origin.strip().lower()
    if origin == f"{scheme}://{host}":
        return True
    # A browser leaves out the default port that a Host may carry.
    default = ":443" if scheme == "https" else ":80"
    return host.endswith(default) and origin == f"{scheme}://{host[: -len(default)]}"


def _media_type(content_type: str | None) -> str:
    if content_type is None:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _refuse(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": message, "kind": kind}, status=status)
