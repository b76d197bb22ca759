"""The supervisor's end of every container's stdout and stderr.

Each start gets two FIFOs in the container's supervisor folder. The
container's stdout and stderr are opened on them read-write: the container
then always holds a reader of its own, so a supervisor that is gone for a
while (restarted, upgraded) never costs it a SIGPIPE; it blocks once the
pipe's 64 kB are full, as Docker's blocking log mode does, and a restarted
supervisor opens the FIFOs again by name and goes on. The supervisor reads
them without blocking in its one loop and appends records
(``logfile.encode``) to the container's log file, each read in one
``write``, timed when read.

Per container it keeps two descriptors and a few small objects; the log file
is opened for each write, so no descriptor is held for it. A log that cannot
be written (full disk) loses that output, said once in the supervisor's log,
and the container goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cove.runtime.logfile import Stream, encode

log = logging.getLogger(__name__)

_READ = 65536
_FIFOS = (("stdout", Stream.STDOUT), ("stderr", Stream.STDERR))
KIND = "log"  # the selector's data: (KIND, fd)


@dataclass(slots=True)
class _Reader:
    cid: str
    stream: Stream
    log_path: str


class LogPipes:
    def __init__(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        self._readers: dict[int, _Reader] = {}
        self._last: dict[str, int] = {}  # cid -> the last record's time (never back)
        self._failing: set[str] = set()

    def open(self, cid: str, folder: Path, log_path: str) -> tuple[int, int]:
        """The FIFOs for a start of ``cid``, read from now on; returns the
        container's ends (read-write, blocking), for the caller to pass on
        and close."""
        with contextlib.suppress(OSError):
            _end_line(log_path)
        # there from the start: ``logs -f`` follows a file, which must exist
        os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))
        ends: list[int] = []
        try:
            for name, stream in _FIFOS:
                path = folder / name
                # A reader still on the FIFO (a process of the last run holds
                # it open) goes on reading it: no second one.
                if _make_fifo(path) or not self._reading(cid, stream):
                    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                    self._watch(fd, cid, stream, log_path)
                ends.append(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError:
            for fd in ends:
                os.close(fd)
            self.close(cid)
            raise
        return ends[0], ends[1]

    def adopt(self, cid: str, folder: Path, log_path: str) -> None:
        """After a supervisor restart: read a running container's FIFOs
        again (none for one started before records: it appends itself)."""
        for name, stream in _FIFOS:
            try:
                fd = os.open(folder / name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            self._watch(fd, cid, stream, log_path)

    def _reading(self, cid: str, stream: Stream) -> bool:
        return any(r.cid == cid and r.stream is stream for r in self._readers.values())

    def _watch(self, fd: int, cid: str, stream: Stream, log_path: str) -> None:
        self._readers[fd] = _Reader(cid, stream, log_path)
        self._sel.register(fd, selectors.EVENT_READ, (KIND, fd))

    def on_readable(self, fd: int) -> None:
        """One read (fair to the other containers): its records appended;
        the reader closed once every writer has gone."""
        reader = self._readers.get(fd)
        if reader is None:
            return
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        self._append(reader, data)

    def drain(self, cid: str) -> None:
        """All that ``cid``'s pipes hold now (its init has exited: what it
        wrote is logged before its exit is recorded)."""
        for fd in [fd for fd, r in self._readers.items() if r.cid == cid]:
            for _ in range(64):  # bounded: a writer left behind may go on
                if fd not in self._readers:
                    break
                try:
                    data = os.read(fd, _READ)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self._drop(fd)
                    break
                self._append(self._readers[fd], data)

    def record(self, cid: str, log_path: str, data: bytes) -> None:
        """Append ``data``, read now from ``cid``'s terminal (a -t
        container's output, which ``stdio.Terminals`` reads), as stdout."""
        self._append(_Reader(cid, Stream.STDOUT, log_path), data)

    def close(self, cid: str) -> None:
        """Stop reading ``cid``'s pipes (it is removed)."""
        for fd in [fd for fd, r in self._readers.items() if r.cid == cid]:
            self._drop(fd)
        self._last.pop(cid, None)
        self._failing.discard(cid)

    def _drop(self, fd: int) -> None:
        self._readers.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)
        os.close(fd)

    def _append(self, reader: _Reader, data: bytes) -> None:
        now = max(time.time_ns(), self._last.get(reader.cid, 0))
        self._last[reader.cid] = now
        try:
            if reader.cid in self._failing:
                _end_line(reader.log_path)  # the last record may have been cut short
            fd = os.open(reader.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o640)  # fmt: skip
            try:
                _write_all(fd, encode(reader.stream, data, now))
            finally:
                os.close(fd)
        except OSError as exc:
            if reader.cid not in self._failing:
                self._failing.add(reader.cid)
                log.error("cannot write the log of %s, its output is lost: %s", reader.cid, exc)
        else:
            self._failing.discard(reader.cid)


def _make_fifo(path: Path) -> bool:
    """A FIFO at ``path``; an earlier start's is reused (a restart on a full
    disk needs no new inode). True when it is new."""
    try:
        if stat.S_ISFIFO(os.lstat(path).st_mode):
            return False
        path.unlink()
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o600)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _end_line(log_path: str) -> None:
    """End the file's last line if it has no newline (output appended by a
    container started before records, or a record a full disk cut)."""
    try:
        fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
    finally:
        os.close(fd)
