"""A small HTTP client for the agent's Unix socket (stdlib only, so the CLI
starts fast). Error responses come back as the ``CoveError`` they carry."""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cove.errors import CoveError, StorageFull, Unavailable, from_json


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


class AgentClient:
    def __init__(self, socket_path: Path, timeout: float = 60.0, token: str | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        # The registry commands speak /v1, which enforces ACLs when the
        # agent has them on; Consul's own CLI takes its token from here too.
        self.token = token if token is not None else os.environ.get("CONSUL_HTTP_TOKEN") or None

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
        conn = _UnixConnection(str(self.socket_path), self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Unavailable(
                f"cannot reach the cove agent at {self.socket_path}: is `cove agent` running?"
            ) from exc
        except PermissionError as exc:
            raise Unavailable(
                f"permission denied on {self.socket_path}: the agent socket is root only"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"lost the connection to the agent: {exc}") from exc
        finally:
            conn.close()
