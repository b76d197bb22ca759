"""HTTP/1.1 request framing, by llhttp (Node's parser) through httptools.

A hand-written parser was lenient where llhttp is strict (bare LF inside the
head, control bytes in names and paths, ``1_0`` as a chunk size, a vertical
tab after ``chunked``) and had a crash path (``Content-Length: ²``); framing
disagreements between a server and whatever stands in front of it are how
requests get smuggled, so the framing is left to a parser that is fuzzed and
maintained. What cove adds on top: its limits (64 KiB of head, the app's body
size), the versions it speaks, the transfer codings it decodes, and one
``Host`` per request.

``RequestParser.feed`` takes bytes as they arrive and appends each complete
request (a ``Message``) to ``out``; anything malformed appends an
``HttpError`` carrying the status the server answers before it closes the
connection (400, 413, 431, 501, 505), and parsing stops.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NoReturn

import httptools

from cove.errors import HttpError as HttpError  # raised here; defined in the one tree

MAX_HEAD = 64 * 1024  # request line and headers


@dataclass(slots=True)
class Message:
    method: str
    target: str  # as sent: percent-encoded path and query
    version: tuple[int, int]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    keep_alive: bool
    chunked: bool
    length: int  # Content-Length when not chunked
    expect_continue: bool
    body: bytes = b""


_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


class RequestParser:
    """The requests of one connection (see the module docstring)."""

    __slots__ = (
        "_body",
        "_boundary",
        "_error",
        "_head_size",
        "_headers",
        "_in_head",
        "_limit",
        "_message",
        "_parser",
        "_pending",
        "_url",
        "continue_sent",
        "done",
        "out",
    )

    def __init__(self, max_body: int) -> None:
        self._limit = max_body
        self._parser = httptools.HttpRequestParser(self)
        self.out: deque[Message | HttpError] = deque()
        self.done = False  # an error or a last request: ignore what follows
        self.continue_sent = False
        self._error: HttpError | None = None
        self._headers: dict[str, str] = {}
        self._message: Message | None = None
        self._pending = 0  # bytes of whole feeds inside the current head
        self._boundary = False  # a head or a request ended during this feed
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers = {}
        self._head_size = 0
        self._in_head = True
        self._message = None
        self._body = bytearray()
        self.continue_sent = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self._boundary = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The upgrade request itself was complete; cove speaks nothing
            # else on the connection, so it ends after the answer.
            last = self.out[-1] if self.out else None
            if isinstance(last, Message):
                last.keep_alive = False
            self.done = True
            return
        except httptools.HttpParserCallbackError:
            if self.done:
                return
            self._fail(self._error or HttpError(400, "Bad Request"))
            return
        except httptools.HttpParserError as exc:
            if self.done:  # bytes after a last request (Connection: close)
                return
            reason = str(exc) or "malformed request"
            status = 505 if "HTTP version" in reason else 400
            prefix = "HTTP Version Not Supported" if status == 505 else "Bad Request"
            self._fail(HttpError(status, f"{prefix}: {reason}"))
            return
        if self._in_head:
            # llhttp hands a header over only once it is whole (the callbacks
            # count those), so bound what a client can make it buffer on the
            # way: a feed with no head or request ending in it is all head.
            # A feed with one adds at most itself, unseen, to the next head.
            if self._boundary:
                self._pending = 0
            else:
                self._pending += len(data)
                if self._pending > MAX_HEAD:
                    self._fail(HttpError(431, "Request Header Fields Too Large"))

    def close(self) -> None:
        """Drop what is buffered and ignore what follows. The parser and
        llhttp's refer to each other, so without this a half-read body would
        live on until the collector found the cycle."""
        self.done = True
        self.out.clear()
        self._reset()

    @property
    def buffered(self) -> int:
        """Bytes of the body being read, so far."""
        return len(self._body)

    def wants_continue(self) -> bool:
        """Whether the request being read asked for ``100 Continue`` and is
        waiting for it (its head is read, none of its body yet); true once."""
        m = self._message
        if (
            m is None
            or self.continue_sent
            or not m.expect_continue
            or self._body
            or not (m.chunked or m.length)
        ):
            return False
        self.continue_sent = True
        return True

    def _fail(self, error: HttpError) -> None:
        self.out.append(error)
        self.done = True

    def _refuse(self, status: int, message: str) -> NoReturn:
        self._error = HttpError(status, message)
        raise self._error

    # -- llhttp's callbacks ---------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            self._refuse(431, "Request Header Fields Too Large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            self._refuse(431, "Request Header Fields Too Large")
        if not self._in_head:
            # Trailer fields of a chunked body: dropped, so nothing sent after
            # the body (a token, an Origin, a Content-Type) changes what the
            # head said.
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip(" \t")
        headers = self._headers
        if key in headers:
            if key == "host":
                self._refuse(400, "Bad Request: more than one Host header")
            headers[key] = headers[key] + ", " + text
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            if parser.get_http_version() == "0.9":
                self._refuse(400, "Bad Request: malformed request line (no HTTP version)")
            self._refuse(505, f"HTTP Version Not Supported: HTTP/{parser.get_http_version()}")
        target = self._url.decode("latin-1")
        if target.startswith(("http://", "https://")):  # absolute form: keep path and query
            slash = target.find("/", target.find("//") + 2)
            target = target[slash:] if slash >= 0 else "/"
        if not target.startswith("/"):
            self._refuse(400, f"Bad Request: invalid target {target[:80]!r}")
        headers = self._headers
        chunked = False
        length = 0
        te = headers.get("transfer-encoding")
        if te is not None:
            if te.lower() != "chunked":
                self._refuse(501, f"Not Implemented: Transfer-Encoding {te[:40]!r}")
            chunked = True
        else:
            raw = headers.get("content-length")
            if raw is not None:
                length = int(raw)  # llhttp let only digits through
                if length > self._limit:
                    self._refuse(413, "Request Entity Too Large")
        expect = version == (1, 1) and headers.get("expect", "").lower() == "100-continue"
        self._message = Message(
            parser.get_method().decode("ascii"),
            target,
            version,
            headers,
            parser.should_keep_alive(),
            chunked,
            length,
            expect,
        )
        self._in_head = False
        self._pending = 0
        self._boundary = True

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self._limit:
            self._refuse(413, "Request Entity Too Large")

    def on_message_complete(self) -> None:
        message = self._message
        if message is None:  # not reached: llhttp completes only what it began
            return
        message.body = bytes(self._body)
        self.out.append(message)
        if not message.keep_alive:
            self.done = True
        self._reset()
        self._boundary = True


def parse_head(raw: bytes) -> Message:
    """The head of one request (``raw`` ends before the blank line); raises
    the ``HttpError`` the server would answer. For tests and tools."""
    parser = RequestParser(max_body=1 << 62)
    parser.feed(raw + b"\r\n\r\n")
    if parser.out:
        item = parser.out[0]
        if isinstance(item, HttpError):
            raise item
        return item
    if parser._message is not None:  # a body is expected: the head alone was read
        return parser._message
    raise HttpError(400, "Bad Request: incomplete head")
