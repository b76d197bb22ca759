"""A container's log file: what the supervisor writes and ``cove logs``
reads.

One JSON object a line, as Docker's json-file driver writes them::

    {"log":"hello\\n","stream":"stdout","time":"2026-12-06T05:48:32.123456789Z"}

``time`` is when the supervisor read the bytes from the container's pipe,
in UTC with nine digits always, so times compare as strings. A record holds
one line with its newline, or the part of a line that had arrived when it
was read (a prompt, a line longer than a read): readers join the parts of a
line and show the time of its first. Output that is not UTF-8 is kept byte
for byte (``surrogateescape``, escaped as ``\\udcXX`` in the JSON).

A file line that is not a record is output from before records existed
(the container's own bytes, appended as they came): it reads as stdout at
Docker's zero time, ``0001-01-01T00:00:00.000000000Z``, so ``--since``
leaves it out and ``-t`` still gives every line a time. A record cut short
(a full disk) is skipped.

Reading is by complete file lines only, so a record being written is read
once it is whole: ``LogCursor`` follows a growing file that way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import BinaryIO

from cove.timefmt import rfc3339_nano

ZERO = "0001-01-01T00:00:00.000000000Z"
_PREFIX = b'{"log":'
_CHUNK = 65536
_LOOK_BACK = 4096  # records searched for the start of a counted line
# A file line longer than this is output from before records (a record holds
# one read, at most 64 kB escaped): passed on in pieces, never held whole.
_MAX_LINE = 1 << 20


class Stream(IntEnum):
    """Docker's stream numbers, which its multiplexed log stream carries."""

    STDOUT = 1
    STDERR = 2


_NAMES = {Stream.STDOUT: "stdout", Stream.STDERR: "stderr"}
# What JSON must escape (control characters but the newline, quote, backslash).
_NEEDS_ESCAPE = re.compile(rb'[\x00-\x09\x0b-\x1f"\\]')


@dataclass(frozen=True, slots=True)
class Record:
    stream: Stream
    data: bytes
    time: str  # RFC 3339, UTC, nine digits; ZERO for output from before records


def _pieces(data: bytes) -> Iterator[bytes]:
    start = 0
    while start < len(data):
        nl = data.find(b"\n", start)
        end = len(data) if nl < 0 else nl + 1
        yield data[start:end]
        start = end


def encode(stream: Stream, data: bytes, time_ns: int) -> bytes:
    """The file lines for ``data`` read from ``stream`` at ``time_ns``: a
    record per line, and one for an unfinished line at the end."""
    t = rfc3339_nano(time_ns)
    if _NEEDS_ESCAPE.search(data) is None:
        try:
            data.decode()
        except UnicodeDecodeError:
            pass
        else:  # the common case, without a JSON encoder: what it would write
            end = f'","stream":"{_NAMES[stream]}","time":"{t}"}}\n'.encode()
            lines = data.split(b"\n")
            last = lines.pop()
            out = b"".join(b'{"log":"' + line + b"\\n" + end for line in lines)
            return out + (b'{"log":"' + last + end if last else b"")
    return _encode_json(stream, data, t)


def _encode_json(stream: Stream, data: bytes, t: str) -> bytes:
    name = _NAMES[stream]
    out = []
    for piece in _pieces(data):
        try:
            text, ascii_only = piece.decode(), False
        except UnicodeDecodeError:  # not UTF-8 (or a character cut by the read)
            text, ascii_only = piece.decode(errors="surrogateescape"), True
        obj = {"log": text, "stream": name, "time": t}
        out.append(json.dumps(obj, ensure_ascii=ascii_only, separators=(",", ":")).encode())
    return b"".join(line + b"\n" for line in out)


# How ``encode`` ends every record: the stream, then the 30-byte time.
_TAILS = {f'","stream":"{name}","time":"'.encode(): stream for stream, name in _NAMES.items()}
_TAIL_LEN = len(next(iter(_TAILS))) + len(ZERO) + 2  # both names are six letters


def decode(line: bytes, newline: bool = True) -> Record | None:
    """The record a file line (without its newline) holds; a line that is
    not a record as stdout at the zero time (with its newline back when
    ``newline``); ``None`` for a record cut short."""
    if not line.startswith(_PREFIX):
        return Record(Stream.STDOUT, line + b"\n" if newline else line, ZERO)
    # Most records need no JSON parser: text with no escape but its newline.
    stream = _TAILS.get(line[-_TAIL_LEN : -len(ZERO) - 2])
    if (
        stream is not None
        and line.endswith(b'"}')
        and line[len(_PREFIX) : len(_PREFIX) + 1] == b'"'
    ):
        text = line[len(_PREFIX) + 1 : -_TAIL_LEN]
        ends = text.endswith(b"\\n")
        body = text[:-2] if ends else text
        if b"\\" not in body and b'"' not in body:
            return Record(
                stream, body + b"\n" if ends else body, line[-len(ZERO) - 2 : -2].decode()
            )
    try:
        obj = json.loads(line)
        text, stream, t = obj["log"], obj["stream"], obj["time"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(text, str) or not isinstance(t, str):
        return None
    which = Stream.STDERR if stream == "stderr" else Stream.STDOUT
    return Record(which, text.encode(errors="surrogateescape"), t)


def _reverse_lines(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """The file's lines, last first, each with the offset it starts at."""
    end = f.seek(0, 2)
    pos = end
    carry = b""  # the end of a line that starts before ``pos``
    first = True
    while pos > 0:
        step = min(_CHUNK, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + carry
        j = len(buf)  # where the line being looked for ends (its newline)
        if first and buf.endswith(b"\n"):
            j -= 1
        first = False
        while (i := buf.rfind(b"\n", 0, j)) >= 0:
            yield pos + i + 1, buf[i + 1 : j]
            j = i
        carry = buf[:j]
        if len(carry) > _MAX_LINE:  # a huge line from before records: cut, not held
            yield pos, carry
            carry = b""
    if end > 0:
        yield 0, carry


def tail_offset(f: BinaryIO, lines: int) -> int:
    """Where the last ``lines`` lines of output start. An unfinished last
    line counts; the earlier parts of a counted line stay with it, so when
    another stream's lines sit between them those come too (never a line
    cut short)."""
    end = f.seek(0, 2)
    if lines <= 0:
        return end
    start = end
    count = 0
    last = True
    open_: set[Stream] = set()  # streams whose first counted line may begin further back
    looked = 0
    for off, line in _reverse_lines(f):
        rec = decode(line)
        if rec is None:
            continue
        ends = rec.data.endswith(b"\n") or last
        last = False
        if count < lines:
            start = off
            count += ends
            open_.add(rec.stream)
            continue
        looked += 1
        if looked > _LOOK_BACK:
            break
        if rec.stream not in open_:
            continue
        if ends:
            open_.discard(rec.stream)
            if not open_:
                break
        else:
            start = off
    return start


@dataclass(frozen=True, slots=True)
class LogQuery:
    """What ``cove logs`` asks for. ``since`` and ``until`` are RFC 3339
    strings as ``rfc3339_nano`` writes them ("" for none), both inclusive
    as Docker's; ``tail`` the number of last lines (``None``: all)."""

    since: str = ""
    until: str = ""
    tail: int | None = None
    timestamps: bool = False


Frame = tuple[Stream, bytes]


class LogCursor:
    """Reads a log file from a position on, by complete lines: what it
    returns is filtered by the query and rendered (times in front of each
    line with ``timestamps``), as (stream, bytes) frames. Not thread-safe;
    one reader at a time (the API calls it from a worker thread)."""

    def __init__(self, f: BinaryIO, query: LogQuery) -> None:
        self._f = f
        self._q = query
        self._pending = b""
        self._line_start = {Stream.STDOUT: True, Stream.STDERR: True}
        self.past_until = False  # a record later than ``until`` was seen

    def start(self) -> None:
        """At the first line the query wants (``tail``), else the start."""
        self._f.seek(0 if self._q.tail is None else tail_offset(self._f, self._q.tail))

    def start_near_end(self, nbytes: int) -> None:
        """At the first whole line of the last ``nbytes`` bytes."""
        size = self._f.seek(0, 2)
        if size <= nbytes:
            self._f.seek(0)
            return
        self._f.seek(size - nbytes)
        self._f.readline()

    def read(self, limit: int = _CHUNK) -> list[Frame] | None:
        """The frames of the next whole lines (maybe none pass the query);
        ``None`` at the end of the file for now."""
        data = self._f.read(limit)
        if not data:
            return None
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        out: list[Frame] = []
        for line in lines:
            self._add(out, decode(line))
        if len(self._pending) > _MAX_LINE:
            self._add(out, Record(Stream.STDOUT, self._pending, ZERO))
            self._pending = b""
        return out

    def rest(self) -> list[Frame]:
        """The unfinished last line, once nothing more will come (output
        from before records may end without a newline)."""
        out: list[Frame] = []
        if self._pending:
            self._add(out, decode(self._pending, newline=False))
            self._pending = b""
        return out

    def _add(self, out: list[Frame], rec: Record | None) -> None:
        if rec is None or not rec.data:
            return
        q = self._q
        if q.since and rec.time < q.since:
            return
        if q.until and rec.time > q.until:
            self.past_until = True
            return
        data = self._render(rec) if q.timestamps else rec.data
        if out and out[-1][0] is rec.stream:
            out[-1] = (rec.stream, out[-1][1] + data)
        else:
            out.append((rec.stream, data))

    def _render(self, rec: Record) -> bytes:
        prefix = rec.time.encode() + b" "
        at_start = self._line_start[rec.stream]
        parts = []
        for piece in _pieces(rec.data):
            if at_start:
                parts.append(prefix)
            parts.append(piece)
            at_start = piece.endswith(b"\n")
        self._line_start[rec.stream] = at_start
        return b"".join(parts)


def frame(stream: Stream, data: bytes) -> bytes:
    """``data`` with the header of Docker's multiplexed stream (stdcopy):
    the stream number, three zero bytes, the length as 32-bit big-endian."""
    return bytes((stream, 0, 0, 0)) + len(data).to_bytes(4, "big") + data
