"""The client's side of attaching to an interactive container (``cove run
-it``, ``-i``, ``-t``, ``cove attach``).

``connect`` asks the supervisor (its root-only socket, whose path the agent
gives to callers allowed to exec) for the held ends of the container's stdio
(``runtime.stdio``). With a terminal, ``Session.relay`` shows the output the
supervisor sends on a channel of its own (the supervisor is the terminal's
only reader) and writes the caller's input to a duplicate of the master, in
raw mode while attached (so ^C, ^Z and ^D are the container's), copying the
caller's window size onto the container's terminal at once and on every
SIGWINCH; it ends when the supervisor reports the container's exit, after
the last output.
Without a terminal, ``pump`` feeds the caller's stdin to the container's
until end-of-file, which the container then sees.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import termios
import threading
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from cove.runtime.stdio import ATTACH_OP

_CHUNK = 65536
_LAST_OUTPUT_WAIT = 5.0  # seconds the last output may take to come, at exit
_EOF = b"\x04"  # the terminal's end-of-file: what a closed stdin means to a -t container
DETACH = b"\x10\x11"  # ctrl-p ctrl-q, Docker's detach keys


class AttachRefused(Exception):
    """The supervisor refused or dropped the attach; ``kind`` and
    ``message`` are its error's."""

    def __init__(self, message: str, kind: str = "unavailable") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


@dataclass(slots=True)
class Session:
    """One attach: ``tty`` and the descriptors the supervisor gave (the
    terminal's master, to write and resize, or the container's stdin; with a
    terminal, ``out``, the channel its output comes on), and its connection,
    on which the container's final state arrives."""

    sock: socket.socket
    tty: bool
    fd: int = -1
    out: int = -1
    _buf: bytes = b""
    _state: dict[str, Any] | None = field(default=None)

    def close(self) -> None:
        for fd in (self.fd, self.out):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.out = -1
        self.sock.close()

    def wait(self) -> dict[str, Any]:
        """The container's state once it has exited (blocks)."""
        while self._state is None:
            self._feed(self.sock.recv(4096))
        return self._state

    def _feed(self, chunk: bytes) -> None:
        if not chunk:
            raise AttachRefused("lost the supervisor while attached")
        self._buf += chunk
        if b"\n" in self._buf:
            line, _, self._buf = self._buf.partition(b"\n")
            answer = json.loads(line)
            if not answer.get("ok"):
                raise AttachRefused(str(answer.get("error")), str(answer.get("kind")))
            self._state = dict(answer["state"])

    def relay(self, stdin: int, stdout: int, forward_input: bool) -> dict[str, Any] | None:
        """Show the container's output on ``stdout`` and write ``stdin`` to
        its terminal until it exits; returns its final state, or ``None`` when
        the user typed the detach keys (the container goes on). Raw mode
        when ``forward_input`` and ``stdin`` is a terminal; restored after."""
        master, out = self.fd, self.out
        size_from = next((fd for fd in (stdin, stdout) if os.isatty(fd)), -1)
        raw = forward_input and os.isatty(stdin)
        watch = [self.sock.fileno()] + ([out] if out >= 0 else [])
        watch += [stdin] if forward_input else []

        def resize(_sig: int = 0, _frame: FrameType | None = None) -> None:
            copy_size(size_from, master)

        def interrupt(_sig: int, _frame: FrameType | None) -> None:
            # not raw (no input forwarded): ^C still reaches the container
            with contextlib.suppress(OSError):
                os.write(master, termios.tcgetattr(master)[6][termios.VINTR])

        handlers: dict[signal.Signals, Any] = {signal.SIGWINCH: resize, signal.SIGINT: interrupt}
        handlers.update({s: _leave for s in (signal.SIGTERM, signal.SIGHUP)})
        keys = _DetachKeys()
        with _signals(handlers), raw_mode(stdin if raw else -1):
            resize()
            while self._state is None:
                try:
                    ready, _, _ = select.select(watch, [], [])
                except InterruptedError:  # pragma: no cover - retried by Python
                    continue
                if out in ready and not _copy(out, stdout):
                    watch.remove(out)  # the supervisor sent the last output
                if stdin in ready:
                    data = os.read(stdin, _CHUNK)
                    if not data:
                        watch.remove(stdin)
                    data, detach = keys.feed(data) if data else (_EOF, False)
                    _write_all(master, data)
                    if detach:
                        return None
                if self.sock.fileno() in ready:
                    self._feed(self.sock.recv(4096))
            if out in watch:
                _drain(out, stdout)
        return self._state


@dataclass(slots=True)
class _DetachKeys:
    """Finds ``DETACH`` in the input, across reads: a ctrl-p is held back
    until the next byte says whether it starts the sequence."""

    held: bytes = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """What to forward, and whether to detach after it."""
        data, self.held = self.held + data, b""
        at = data.find(DETACH)
        if at >= 0:
            return data[:at], True
        if data.endswith(DETACH[:1]):
            data, self.held = data[:-1], DETACH[:1]
        return data, False


def connect(socket_path: str, cid: str, backlog: bool = False) -> Session:
    """Attach to container ``cid`` through the supervisor at
    ``socket_path``; ``backlog``: a terminal's output starts with what it
    wrote while nobody was attached (``run -t``, which attaches once it has
    started it). Raises ``AttachRefused``, or ``OSError`` when the
    supervisor cannot be reached."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(socket_path)
        ask = {"op": ATTACH_OP, "id": cid, "backlog": backlog}
        sock.sendall(json.dumps(ask).encode() + b"\n")
        buf, fds = b"", []
        while b"\n" not in buf:
            data, got, _, _ = socket.recv_fds(sock, 4096, 2, socket.MSG_CMSG_CLOEXEC)
            fds += got
            if not data:
                raise AttachRefused("the supervisor closed the connection")
            buf += data
    except BaseException:
        sock.close()
        raise
    line, _, rest = buf.partition(b"\n")
    head = json.loads(line)
    if not head.get("ok"):
        for fd in fds:
            os.close(fd)
        sock.close()
        raise AttachRefused(str(head.get("error")), str(head.get("kind")))
    tty = bool(head.get("tty"))
    session = Session(sock, tty, fds[0] if fds else -1)
    if tty and len(fds) > 1:
        session.out, fds = fds[1], fds[:1] + fds[2:]
    for extra in fds[1:]:
        os.close(extra)
    if rest:
        session._feed(rest)
    return session


def pump(src: int, dst: int) -> threading.Thread:
    """Copy ``src`` to ``dst`` in a daemon thread, closing ``dst`` at
    end-of-file (or when the container no longer reads)."""

    def run() -> None:
        try:
            while data := os.read(src, _CHUNK):
                _write_all(dst, data)
        except OSError:
            pass  # EPIPE: the container closed its stdin or exited
        finally:
            with contextlib.suppress(OSError):
                os.close(dst)

    thread = threading.Thread(target=run, name="stdin", daemon=True)
    thread.start()
    return thread


def terminal_size(*fds: int) -> list[int]:
    """``[rows, columns]`` of the first of ``fds`` that is a terminal;
    ``[0, 0]`` when none is."""
    for fd in fds:
        with contextlib.suppress(OSError):
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
            return [rows, cols]
    return [0, 0]


def copy_size(src: int, dst: int) -> None:
    """The window size of terminal ``src`` onto terminal ``dst`` (whose
    foreground process group gets SIGWINCH when it changes)."""
    if src < 0:
        return
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal ``fd`` in raw mode within, restored after (no-op for -1)."""
    if fd < 0:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # keeps what was typed ahead
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signals(handlers: dict[signal.Signals, Any]) -> Iterator[None]:
    saved = {sig: signal.signal(sig, fn) for sig, fn in handlers.items()}
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _leave(sig: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + sig)  # the terminal is restored on the way out


def _copy(src: int, dst: int) -> bool:
    try:
        data = os.read(src, _CHUNK)
    except OSError as exc:
        if exc.errno not in (errno.EIO, errno.ECONNRESET):
            raise
        data = b""
    if data:
        _write_all(dst, data)
    return bool(data)


def _drain(out: int, dst: int) -> None:
    """The container's last output: the supervisor closes the channel once
    it has sent it (bounded wait, should it not)."""
    while select.select([out], [], [], _LAST_OUTPUT_WAIT)[0] and _copy(out, dst):
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
