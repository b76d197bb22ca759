"""A small HTTP client for the agent: its Unix socket by default, or an
``http://`` / ``https://`` address (stdlib only, so the CLI starts fast).
Error responses come back as the ``CoveError`` they carry."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

from cove.errors import CoveError, InvalidArgument, StorageFull, Unavailable, from_json


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Remote(NamedTuple):  # not a dataclass: importing dataclasses costs every command
    """The agent over TCP: ``url`` is ``http://HOST:PORT`` or
    ``https://HOST:PORT``; ``ca`` verifies the agent's certificate (default:
    the system's CAs); ``cert``/``key`` answer an agent that verifies
    clients; ``token`` is the ACL token sent with every request."""

    url: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None


class AgentClient:
    def __init__(
        self,
        socket_path: Path,
        timeout: float = 60.0,
        *,
        remote: Remote | None = None,
        token: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.remote = remote
        # The registry commands speak /v1, which enforces ACLs when the agent
        # has them on: the token goes with every request, on the socket too.
        self.token = token or (remote.token if remote is not None else None)
        self._tls: ssl.SSLContext | None = None
        if remote is not None:
            parts = urlsplit(remote.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidArgument(
                    f"invalid agent address {remote.url!r}: expected http://HOST:PORT "
                    "or https://HOST:PORT"
                )
            try:
                self._port = parts.port or (8501 if parts.scheme == "https" else 8500)
            except ValueError:
                raise InvalidArgument(f"invalid port in agent address {remote.url!r}") from None
            self._host = parts.hostname
            if parts.scheme == "https":
                self._tls = _client_context(remote)

    @property
    def where(self) -> str:
        return self.remote.url if self.remote is not None else str(self.socket_path)

    def _connection(self) -> http.client.HTTPConnection:
        if self.remote is None:
            return _UnixConnection(str(self.socket_path), self.timeout)
        if self._tls is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._tls
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        params: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Any:
        """Send one request; returns the decoded JSON (or text) body.
        Raises the ``CoveError`` an error response carries, or
        ``Unavailable`` when the agent cannot be reached."""
        status, body = self.request_raw(method, path, json_body, params=params, raw=raw)
        data: Any
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = body.decode(errors="replace")
        if status >= 400:
            if isinstance(data, dict) and "error" in data:
                raise from_json(data)
            text = data if isinstance(data, str) else json.dumps(data)
            # Consul's routes answer in plain text: the status is all there is.
            kind = StorageFull if status == StorageFull.http_status else CoveError
            err = kind(text.strip() or f"HTTP {status}")
            err.http_status = status
            raise err
        return data

    def request_raw(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        params: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, bytes]:
        if params:
            path = f"{path}?{urlencode(params)}"
        headers = {}
        if self.token:
            headers["X-Consul-Token"] = self.token
        body = raw
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except ssl.SSLCertVerificationError as exc:
            raise Unavailable(
                f"the agent's certificate at {self.where} did not verify "
                f"({exc.verify_message}): pass the CA that signed it with --tls-ca"
            ) from exc
        except ssl.SSLError as exc:
            raise Unavailable(
                f"TLS with the agent at {self.where} failed ({exc.reason or exc}); if it "
                "verifies clients, pass --tls-cert and --tls-key"
            ) from exc
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Unavailable(
                f"cannot reach the cove agent at {self.where}: is `cove agent` running?"
            ) from exc
        except PermissionError as exc:
            raise Unavailable(
                f"permission denied on {self.socket_path}: the agent socket is root only "
                "(or its --socket-group)"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            hint = ""
            if self._tls is not None and self.remote is not None and self.remote.cert is None:
                # Under TLS 1.3 a refused client certificate often shows only
                # as a closed connection, so say what the likely cause is.
                hint = (
                    "; if the agent verifies clients (--tls-verify-incoming), "
                    "pass --tls-cert and --tls-key"
                )
            raise Unavailable(
                f"lost the connection to the agent at {self.where}: {exc}{hint}"
            ) from exc
        finally:
            conn.close()


def _client_context(remote: Remote) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(remote.ca) if remote.ca else None)
        if remote.cert is not None:
            ctx.load_cert_chain(remote.cert, remote.key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"cannot load the CLI's TLS files: {exc}") from exc
    return ctx
