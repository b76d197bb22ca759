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
  ``multipart/form-data``), except KV values, which are raw bytes.

Each refusal is a JSON ``{"error", "kind"}`` answer naming what is wrong and
the way out; the request reaches no handler, so nothing changes.
"""

from __future__ import annotations

import errno
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
_LOCAL_CACHE_MAX = 256


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
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((str(addr), 0))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT):
                return False
            raise
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
    _hosts_ok: dict[tuple[str, str, int], bool] = field(default_factory=dict)

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
        refusal = self._check_host(request)
        if refusal is not None:
            return refusal
        method = request.method
        writes = method in _STATE_CHANGING
        if writes:
            origin = request.headers.get("origin")
            if origin is not None and not self._own_origin(request, str(origin)):
                return _refuse(
                    403,
                    "permission_denied",
                    f"cross-site request refused: Origin {str(origin)[:100]!r} is not this "
                    f"listener's own ({listener.scheme}://{request.headers.get('host', '')}); "
                    "send the request without an Origin header or from the agent's own origin",
                )
        path = request.raw_path
        if path.startswith("/api/") or path == "/api":
            return self._check_native(request, method not in ("GET", "HEAD"))
        if path.startswith("/v1/") and request.content_length:
            ctype = _media_type(request)
            if ctype in _SIMPLE_FORM_TYPES and not (method == "PUT" and path.startswith("/v1/kv/")):
                return _refuse(
                    415,
                    "invalid_argument",
                    f"Content-Type {ctype} is not accepted on /v1 (browsers send it "
                    "cross-site without asking): send application/json, or no Content-Type",
                )
        return None

    def _check_host(self, request: web.Request) -> web.StreamResponse | None:
        raw = request.headers.get("host")
        if raw is None:
            if request.version >= (1, 1):
                return _refuse(
                    400,
                    "invalid_argument",
                    "an HTTP/1.1 request needs a Host header naming the agent",
                )
            return None  # HTTP/1.0 clients may omit it; browsers never do
        listener = request.listener
        key = (str(raw), listener.host, listener.port)
        ok = self._hosts_ok.get(key)
        if ok is None:
            ok = self._host_names_listener(str(raw), listener)
            if len(self._hosts_ok) >= _LOCAL_CACHE_MAX:
                self._hosts_ok.clear()
            self._hosts_ok[key] = ok
        if ok:
            return None
        return _refuse(
            421,
            "invalid_argument",
            f"Host {str(raw)[:100]!r} does not name this agent: use one of its addresses "
            "(or localhost on loopback), or allow the name with --http-allowed-host",
        )

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

    def _own_origin(self, request: web.Request, origin: str) -> bool:
        scheme = request.listener.scheme
        host = str(request.headers.get("host", "")).lower()
        origin = origin.strip().lower()
        if origin == f"{scheme}://{host}":
            return True
        # A browser leaves out the default port that a Host may carry.
        default = ":443" if scheme == "https" else ":80"
        return host.endswith(default) and origin == f"{scheme}://{host[: -len(default)]}"

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
        if request.content_length and _media_type(request) != "application/json":
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


def _media_type(request: web.Request) -> str:
    raw = request.headers.get("content-type")
    if raw is None:
        return ""
    return str(raw).split(";", 1)[0].strip().lower()


def _refuse(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": message, "kind": kind}, status=status)
