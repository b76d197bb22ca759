"""The supervisor's reading of a -t container's terminal (``stdio.Terminals``)
without root: a pseudo-terminal plays the container's, the test's own
selector loop the supervisor's. It is the master's only reader: everything
goes to the log, attached clients get a copy, and neither a container with
nobody attached nor a client that does not read ever blocks it."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import termios
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cove.runtime.stdio import DROPPED, TTY_KIND, VIEW_KIND, Terminals


class _Loop:
    """A pseudo-terminal read by ``Terminals`` in a selector loop, as in the
    supervisor; ``logged`` is what reached the log."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.logged = bytearray()
        self.ttys = Terminals(self.sel, self._record)
        self.master, self.slave = os.openpty()
        _raw_output(self.slave)
        self.ttys.watch("c1", self.master)

    def _record(self, cid: str, data: bytes) -> None:
        assert cid == "c1"
        self.logged += data

    def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < end, "timed out"
            for key, _ in self.sel.select(0.05):
                kind, obj = key.data
                if kind == TTY_KIND:
                    self.ttys.on_readable(obj)
                elif kind == VIEW_KIND:
                    self.ttys.on_view(obj)

    def close(self) -> None:
        self.ttys.forget("c1")
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sel.close()


def _raw_output(fd: int) -> None:
    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.OPOST  # no \n -> \r\n: the bytes written are the bytes read
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


@pytest.fixture
def loop() -> Iterator[_Loop]:
    lp = _Loop()
    yield lp
    lp.close()


def _writer(fd: int, data: bytes) -> threading.Thread:
    """The container writing ``data`` to its terminal (blocking, as it would)."""

    def run() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_chatty_terminal_with_nobody_attached_never_blocks(loop: _Loop) -> None:
    data = bytes(i % 251 for i in range(200_000))  # ten times what the terminal holds
    writer = _writer(loop.slave, data)
    loop.run_until(lambda: len(loop.logged) >= len(data))
    writer.join(5)
    assert not writer.is_alive(), "the container's writes all returned"
    assert bytes(loop.logged) == data
    # a later attacher that asks for it gets only the bounded tail
    theirs = socket.socket(fileno=loop.ttys.view("c1", lambda _: None, backlog=True))
    try:
        got = theirs.recv(1 << 20)
        assert 0 < len(got) <= 64 << 10 and data.endswith(got)
    finally:
        theirs.close()


def test_every_attached_client_sees_the_output_and_the_end(loop: _Loop) -> None:
    os.write(loop.slave, b"before anyone\n")
    loop.run_until(lambda: b"before" in loop.logged)
    a = socket.socket(fileno=loop.ttys.view("c1", lambda _: None, backlog=False))
    b = socket.socket(fileno=loop.ttys.view("c1", lambda _: None, backlog=False))
    try:
        os.write(loop.slave, b"hello both\n")
        loop.run_until(lambda: b"hello both" in loop.logged)
        # the container exits: what its terminal still holds is sent, then the end
        os.write(loop.slave, b"last words\n")
        os.close(loop.slave)
        loop.ttys.drain("c1")
        for client in (a, b):
            got = b""
            client.settimeout(5)
            while chunk := client.recv(4096):
                got += chunk
            assert got == b"hello both\nlast words\n"  # not what came before it attached
        assert bytes(loop.logged) == b"before anyone\nhello both\nlast words\n"
    finally:
        a.close()
        b.close()


def test_a_client_that_does_not_read_is_let_go_and_the_rest_goes_on(loop: _Loop) -> None:
    why: list[str] = []
    stuck = socket.socket(fileno=loop.ttys.view("c1", why.append, backlog=False))
    data = b"x" * 3_000_000  # more than a client may fall behind
    try:
        writer = _writer(loop.slave, data)
        loop.run_until(lambda: len(loop.logged) >= len(data))
        writer.join(5)
        assert not writer.is_alive() and why == [DROPPED]
        assert stuck.recv(1 << 20)  # what was sent before, then the end
        stuck.settimeout(5)
        while stuck.recv(1 << 20):
            pass
    finally:
        stuck.close()


def test_a_client_that_goes_is_forgotten(loop: _Loop) -> None:
    gone = socket.socket(fileno=loop.ttys.view("c1", lambda _: None, backlog=False))
    gone.close()
    os.write(loop.slave, b"still logged\n")
    loop.run_until(lambda: b"still logged" in loop.logged)
    loop.run_until(lambda: len(loop.sel.get_map()) == 1)  # only the master is watched
