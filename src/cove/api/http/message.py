"""HTTP/1.1 request framing: the request head, the body's length or chunks.

Pure functions and small state machines over bytes, shared by the server's
protocol and unit-tested on their own. Anything malformed raises
``HttpError`` with the status the server answers before it closes the
connection (400, 413, 431, 501).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD = 64 * 1024  # request line and headers
MAX_CHUNK_LINE = 1024  # a chunk-size line, extensions included
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HttpError(Exception):
    """A request the server refuses before any handler sees it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Head:
    method: str
    target: str  # as sent: percent-encoded path and query
    version: tuple[int, int]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    keep_alive: bool
    chunked: bool
    length: int  # body bytes when not chunked
    expect_continue: bool


def parse_head(raw: bytes) -> Head:
    """The request line and headers (``raw`` ends before the blank line)."""
    lines = raw.decode("latin-1").split("\r\n")  # latin-1: every byte decodes
    request_line = lines[0]
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise HttpError(400, f"Bad Request: malformed request line {request_line[:80]!r}")
    method, target, proto = parts
    if not method or not all(ord(c) in _TOKEN for c in method):
        raise HttpError(400, f"Bad Request: invalid method {method[:20]!r}")
    if proto == "HTTP/1.1":
        version = (1, 1)
    elif proto == "HTTP/1.0":
        version = (1, 0)
    elif proto.startswith("HTTP/"):
        raise HttpError(505, f"HTTP Version Not Supported: {proto[:20]}")
    else:
        raise HttpError(400, f"Bad Request: malformed request line {request_line[:80]!r}")
    if target.startswith(("http://", "https://")):  # absolute form: keep path and query
        slash = target.find("/", target.find("//") + 2)
        target = target[slash:] if slash >= 0 else "/"
    if not target.startswith("/"):
        raise HttpError(400, f"Bad Request: invalid target {target[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t" or name[0] in " \t":
            raise HttpError(400, f"Bad Request: malformed header {line[:80]!r}")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            if name in ("content-length", "host"):
                if headers[name] != value:
                    raise HttpError(400, f"Bad Request: conflicting {name} headers")
                continue
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value
    return _frame(method, target, version, headers)


def _frame(method: str, target: str, version: tuple[int, int], headers: dict[str, str]) -> Head:
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == (1, 1) else "keep-alive" in connection
    chunked = False
    length = 0
    te = headers.get("transfer-encoding")
    if te is not None:
        if "content-length" in headers:
            raise HttpError(400, "Bad Request: both Transfer-Encoding and Content-Length")
        codings = [c.strip().lower() for c in te.split(",")]
        if codings != ["chunked"]:
            raise HttpError(501, f"Not Implemented: Transfer-Encoding {te[:40]!r}")
        chunked = True
    elif "content-length" in headers:
        raw = headers["content-length"]
        if not raw.isdigit() or len(raw) > 18:
            raise HttpError(400, f"Bad Request: invalid Content-Length {raw[:20]!r}")
        length = int(raw)
    expect = headers.get("expect", "").lower() == "100-continue" and version == (1, 1)
    return Head(method, target, version, headers, keep_alive, chunked, length, expect)


class ChunkedBody:
    """Decodes a chunked body as its bytes arrive: ``feed`` consumes what it
    can from the front of ``buf`` and says whether the body is complete."""

    __slots__ = ("_limit", "_size", "_state", "body")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._state = "size"  # size, data, data-end, trailer
        self._size = 0
        self.body = bytearray()

    def feed(self, buf: bytearray) -> bool:
        while True:
            if self._state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise HttpError(400, "Bad Request: chunk size line too long")
                    return False
                line = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    size = int(line, 16)
                except ValueError:
                    raise HttpError(400, f"Bad Request: invalid chunk size {line[:20]!r}") from None
                if size < 0 or line.startswith((b"+", b"-", b"0x", b"0X")):
                    raise HttpError(400, f"Bad Request: invalid chunk size {line[:20]!r}")
                if len(self.body) + size > self._limit:
                    raise HttpError(413, "Request Entity Too Large")
                self._size = size
                self._state = "data" if size else "trailer"
            elif self._state == "data":
                take = min(self._size, len(buf))
                self.body += buf[:take]
                del buf[:take]
                self._size -= take
                if self._size:
                    return False
                self._state = "data-end"
            elif self._state == "data-end":
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise HttpError(400, "Bad Request: chunk data not followed by CRLF")
                del buf[:2]
                self._state = "size"
            else:  # trailer fields, ignored, up to the blank line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise HttpError(431, "Request Header Fields Too Large")
                    return False
                del buf[: end + 2]
                if end == 0:
                    return True
