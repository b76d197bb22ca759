"""Requests and responses as handlers see them.

The names and shapes follow what aiohttp's handlers are used to
(``request.match_info``, ``request.query.getall``, ``await request.read()``,
``Response(text=..., status=...)``, ``StreamResponse.prepare/write``), so a
handler reads the same; the objects themselves are plain and cheap.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote

from cove.api.http.listener import UNIX, Listener

if TYPE_CHECKING:
    from cove.api.http.routing import Application


class Headers(Mapping[str, str]):
    """Request headers; names are case-insensitive."""

    __slots__ = ("_d",)

    def __init__(self, lowered: dict[str, str]) -> None:
        self._d = lowered

    @property
    def lowered(self) -> Mapping[str, str]:
        """The headers by lower-case name, without case folding per look-up
        (for code on every request's path)."""
        return self._d

    def __getitem__(self, name: str) -> str:
        return self._d[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._d.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


class Query(Mapping[str, str]):
    """Query parameters: the first value of a name, or all of them."""

    __slots__ = ("_d",)

    def __init__(self, raw: str) -> None:
        d: dict[str, list[str]] = {}
        if raw:
            for name, value in parse_qsl(raw, keep_blank_values=True):
                d.setdefault(name, []).append(value)
        self._d = d

    def __getitem__(self, name: str) -> str:
        return self._d[name][0]

    def getall(self, name: str, default: list[str] | None = None) -> list[str]:
        found = self._d.get(name)
        if found is None:
            if default is None:
                raise KeyError(name)
            return default
        return list(found)

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


class Channel(Protocol):
    """What a response streams through: the server's connection."""

    def send_head(self, head: bytes) -> None: ...

    async def send_body(self, data: bytes) -> None: ...

    @property
    def chunked_ok(self) -> bool: ...

    def reclaimed(self) -> asyncio.Future[None]: ...


class Request:
    """One request, its body already read (within the app's size limit)."""

    __slots__ = (
        "_body",
        "_path",
        "_query",
        "app",
        "channel",
        "headers",
        "keep_alive",
        "listener",
        "match_info",
        "method",
        "query_string",
        "raw_path",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        version: tuple[int, int],
        headers: Headers,
        body: bytes,
        app: Application,
        channel: Channel,
        keep_alive: bool,
        listener: Listener = UNIX,
    ) -> None:
        self.method = method
        raw_path, _, self.query_string = target.partition("?")
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self._body = body
        self.app = app
        self.channel = channel
        self.keep_alive = keep_alive
        self.listener = listener  # the one it came on: what it may reach depends on it
        self.match_info: dict[str, str] = {}
        self._path: str | None = None
        self._query: Query | None = None

    @property
    def path(self) -> str:
        """The path, percent-decoded."""
        if self._path is None:
            self._path = unquote(self.raw_path)
        return self._path

    @property
    def query(self) -> Query:
        if self._query is None:
            self._query = Query(self.query_string)
        return self._query

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        return int(raw) if raw is not None else len(self._body)

    @property
    def body_size(self) -> int:
        return len(self._body)

    def reclaimed(self) -> asyncio.Future[None]:
        """Done when the server, short of connections, wants this request's
        connection back (the connection closes after the answer), or when
        another request waits behind this one: a handler that waits long (a
        blocking query) answers at once then."""
        return self.channel.reclaimed()

    async def read(self) -> bytes:
        return self._body


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


class StreamResponse:
    """A response whose body is written in pieces after ``prepare``
    (chunked on HTTP/1.1)."""

    def __init__(
        self,
        *,
        status: int = 200,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self._channel: Channel | None = None
        self._chunked = False
        self._done = False

    @property
    def prepared(self) -> bool:
        return self._channel is not None

    async def prepare(self, request: Request) -> None:
        if self._channel is not None:
            return
        channel = request.channel
        self._chunked = channel.chunked_ok
        headers = dict(self.headers)
        if self._chunked:
            headers["Transfer-Encoding"] = "chunked"
        channel.send_head(render_head(self.status, self.reason, headers))
        self._channel = channel

    async def write(self, data: bytes) -> None:
        if self._channel is None:
            raise RuntimeError("write() before prepare()")
        if not data:
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        await self._channel.send_body(data)

    async def write_eof(self) -> None:
        if self._channel is None or self._done:
            return
        self._done = True
        if self._chunked:
            await self._channel.send_body(b"0\r\n\r\n")


class Response(StreamResponse):
    """A whole response: a status, headers and a body known up front."""

    def __init__(
        self,
        *,
        body: bytes | None = None,
        status: int = 200,
        reason: str | None = None,
        text: str | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        charset: str | None = None,
    ) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        if text is not None:
            if body is not None:
                raise ValueError("a Response takes body or text, not both")
            body = text.encode(charset or "utf-8")
            content_type = content_type or "text/plain"
            charset = charset or "utf-8"
        self.body = body or b""
        if content_type is None and body is not None:
            content_type = "application/octet-stream"
        if content_type is not None:
            self.headers["Content-Type"] = (
                f"{content_type}; charset={charset}" if charset else content_type
            )

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def render(self, *, head_only: bool = False) -> bytes:
        """Status line, headers and body, as sent on the wire."""
        if self.status < 200 or self.status in (204, 304):  # no body, no length
            self.headers.pop("Content-Type", None)
            return render_head(self.status, self.reason, self.headers)
        self.headers["Content-Length"] = str(len(self.body))
        head = render_head(self.status, self.reason, self.headers)
        return head if head_only else head + self.body


def render_head(status: int, why: str | None, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {why or reason(status)}"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"a response header holds a line break: {name!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def json_response(data: Any, *, status: int = 200) -> Response:
    """The native API's answers, through the standard library: unlike
    ``cove.codec`` it takes any JSON-able value (int keys, subclasses), and
    these routes are not hot."""
    return Response(body=json.dumps(data).encode(), status=status, content_type="application/json")
