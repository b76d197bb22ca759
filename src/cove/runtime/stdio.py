"""The stdio of an interactive container (``run -t`` and/or ``-i``), as the
supervisor makes and keeps it.

``-t``: the container's init opens a terminal in its own ``/dev/pts`` (after
``pivot_root``, so its name is valid inside, and before dropping root, so it
can give the terminal to the container's user), makes it its controlling
terminal and stdio, and sends the master back to the supervisor over the
start's report socket (SCM_RIGHTS, as runc's ``--console-socket``). The
supervisor holds the master for the container's life, so the container never
sees a hang-up when a client goes, and is its only reader (``Terminals``):
what the container writes goes to its log (stream stdout, as Docker's) and to
every attached client over a socket of its own, so a container with nobody
attached never blocks, and a client that reads too slowly is dropped, never
waited for. An attacher (``runtime.attach``) also gets a duplicate of the
master, which it only writes (its input) and resizes with an ioctl.

``-i`` without ``-t``: the init's stdin is a pipe; the supervisor keeps the
write end and gives it away to the first attacher (Docker's ``StdinOnce``), so
the container sees end-of-file when that client's input ends. Its output goes
to the log, as every container's.

A container with neither costs nothing here: ``Plan.open`` makes nothing and
the report channel stays a pipe.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import selectors
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass, field

ATTACH_OP = "attach"  # the supervisor's request that hands the held ends over
TTY_KIND = "tty"  # the selector's data: (TTY_KIND, cid), a container's master
VIEW_KIND = "tty-view"  # (VIEW_KIND, viewer), an attached client's output channel
_READ = 65536
_PENDING_MAX = 1 << 20  # output a client has not taken yet; beyond, it is dropped
_BACKLOG_MAX = 64 << 10  # output kept for the next attacher while none is
DROPPED = "this terminal read the container's output too slowly and was let go; attach again"


@dataclass(slots=True)
class HeldStdio:
    """The supervisor's end of one container's stdio, from its last start."""

    tty: bool
    master: int = -1  # -t: the terminal's master
    stdin: int = -1  # -i without -t: the write end of the init's stdin

    def handover(self) -> list[int]:
        """The descriptors for an attacher, which the caller sends and then
        closes: a duplicate of the master, or the stdin pipe itself (given
        away: a second attacher gets none)."""
        if self.master >= 0:
            return [os.dup(self.master)]
        if self.stdin >= 0:
            fd, self.stdin = self.stdin, -1
            return [fd]
        return []

    def close(self) -> None:
        for fd in (self.master, self.stdin):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.stdin = -1


@dataclass(slots=True)
class Plan:
    """One start's stdio: made before the fork, set up by the init, its
    supervisor's end handed to a ``HeldStdio`` after."""

    tty: bool
    interactive: bool
    size: tuple[int, int] = (0, 0)  # rows, columns of the terminal at start
    stdin_r: int = -1  # -i without -t: the pipe's ends
    stdin_w: int = -1
    master: int = -1  # -t: received from the init

    @classmethod
    def open(cls, tty: bool, interactive: bool, size: tuple[int, int] = (0, 0)) -> Plan:
        plan = cls(tty, interactive, size)
        if interactive and not tty:
            plan.stdin_r, plan.stdin_w = os.pipe2(os.O_CLOEXEC)
        return plan

    def report_channel(self) -> tuple[int, int] | None:
        """A socket pair for the start's report when the init must send the
        terminal's master back; ``None``: the usual pipe will do."""
        if not self.tty:
            return None
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return a.detach(), b.detach()

    def read_report(self, fd: int) -> bytes:
        """A chunk of the report from the socket ``fd``, keeping the master
        that comes with it."""
        sock = socket.socket(fileno=fd)
        try:
            data, fds, _, _ = socket.recv_fds(sock, 4096, 2, socket.MSG_CMSG_CLOEXEC)
        finally:
            sock.detach()
        for got in fds:
            if self.master >= 0:
                os.close(self.master)
            self.master = got
        return data

    def in_init(self, report: int) -> None:  # pragma: no cover - in the init
        """Replace the init's usual stdio (/dev/null, the log) with the
        terminal or the stdin pipe (process B, inside its root, still root)."""
        if self.tty:
            master, slave = os.openpty()
            if all(self.size):
                fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *self.size, 0, 0))
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            sock = socket.socket(fileno=report)
            try:
                socket.send_fds(sock, [b"tty\n"], [master])
            finally:
                sock.detach()
            os.close(master)
            if slave > 2:
                os.close(slave)
        elif self.stdin_r >= 0:
            os.dup2(self.stdin_r, 0)

    def close_child_ends(self) -> None:
        """In the supervisor once forked: the init's end is the init's."""
        if self.stdin_r >= 0:
            os.close(self.stdin_r)
            self.stdin_r = -1

    def hand_to(self, held: HeldStdio) -> None:
        held.close()
        held.tty = self.tty
        held.master, self.master = self.master, -1
        held.stdin, self.stdin_w = self.stdin_w, -1

    def close(self) -> None:
        for fd in (self.stdin_r, self.stdin_w, self.master):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.stdin_r = self.stdin_w = self.master = -1


Record = Callable[[str, bytes], None]  # (cid, output): appends it to cid's log


@dataclass(eq=False, slots=True)
class _Viewer:
    """One attached client's output channel (the supervisor's end)."""

    cid: str
    sock: socket.socket
    dropped: Callable[[str], None]  # told why, when the supervisor lets it go
    pending: bytearray = field(default_factory=bytearray)
    closing: bool = False  # the container exited: closed once pending is sent


@dataclass(eq=False, slots=True)
class _Terminal:
    master: int  # HeldStdio's: read here, closed there
    viewers: list[_Viewer] = field(default_factory=list)
    backlog: bytearray = field(default_factory=bytearray)  # read while nobody was attached


class Terminals:
    """The supervisor's reading of every -t container's terminal, in its
    selector loop: each read is appended to the container's log and sent to
    its attached clients, without ever blocking on either."""

    def __init__(self, sel: selectors.BaseSelector, record: Record) -> None:
        self._sel = sel
        self._record = record
        self._ttys: dict[str, _Terminal] = {}

    def watch(self, cid: str, master: int) -> None:
        """Read ``master``, the terminal of ``cid``'s new start."""
        self.forget(cid)
        self._ttys[cid] = _Terminal(master)
        self._sel.register(master, selectors.EVENT_READ, (TTY_KIND, cid))

    def forget(self, cid: str) -> None:
        """Stop reading ``cid``'s terminal (its master is about to be closed
        by its owner) and let its clients go."""
        term = self._ttys.pop(cid, None)
        if term is None:
            return
        self._unwatch(term)
        for viewer in term.viewers:
            self._close(viewer)

    def has(self, cid: str) -> bool:
        """Whether ``cid``'s last start had a terminal, read here."""
        return cid in self._ttys

    def view(self, cid: str, dropped: Callable[[str], None], backlog: bool) -> int:
        """A new client of ``cid``'s output: returns the client's end of
        its channel, for the caller to send and close. ``backlog``: it
        starts with what was read while nobody was attached (the output a
        ``run -t`` gives before its CLI attaches, or exits by then: the
        channel then closes once that is sent)."""
        term = self._ttys[cid]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        viewer = _Viewer(cid, ours, dropped)
        self._sel.register(ours, selectors.EVENT_READ, (VIEW_KIND, viewer))
        term.viewers.append(viewer)
        if backlog and term.backlog:
            self._send(viewer, bytes(term.backlog))
        term.backlog.clear()
        if term.master < 0:
            self._finish(term)
        return theirs.detach()

    def on_readable(self, cid: str) -> None:
        """One read of ``cid``'s terminal (fair to the other containers)."""
        term = self._ttys.get(cid)
        if term is None or term.master < 0 or not _readable(term.master):
            return
        try:
            data = os.read(term.master, _READ)
        except OSError:  # EIO: every end of the terminal's slave is closed
            data = b""
        if not data:
            self._unwatch(term)
            self._finish(term)
            return
        self._record(cid, data)
        if not term.viewers:
            term.backlog += data
            del term.backlog[:-_BACKLOG_MAX]
        for viewer in list(term.viewers):
            self._send(viewer, data)

    def drain(self, cid: str) -> None:
        """``cid``'s init has exited: what its terminal holds now goes to
        the log and the clients, whose channels then close once sent."""
        term = self._ttys.get(cid)
        if term is None:
            return
        for _ in range(64):  # bounded: a process left behind may go on
            if term.master < 0 or not _readable(term.master):
                break
            self.on_readable(cid)
        self._finish(term)

    def on_view(self, viewer: _Viewer) -> None:
        """A client's channel is writable again, or it was closed (its
        client detached or went): anything it sends is ignored."""
        if viewer.pending:
            self._flush(viewer)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            try:
                gone = not viewer.sock.recv(_READ)
            except OSError:
                gone = True
            if gone:
                self._close(viewer)

    def _send(self, viewer: _Viewer, data: bytes) -> None:
        if viewer.pending:
            viewer.pending += data
        else:
            try:
                sent = viewer.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(viewer)
                return
            if sent < len(data):
                viewer.pending += data[sent:]
                mask = selectors.EVENT_READ | selectors.EVENT_WRITE
                self._sel.modify(viewer.sock, mask, (VIEW_KIND, viewer))
        if len(viewer.pending) > _PENDING_MAX:
            self._close(viewer)
            viewer.dropped(DROPPED)

    def _flush(self, viewer: _Viewer) -> None:
        try:
            sent = viewer.sock.send(viewer.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(viewer)
            return
        del viewer.pending[:sent]
        if viewer.pending:
            return
        if viewer.closing:
            self._close(viewer)
        else:
            self._sel.modify(viewer.sock, selectors.EVENT_READ, (VIEW_KIND, viewer))

    def _finish(self, term: _Terminal) -> None:
        viewers, term.viewers = term.viewers, []
        for viewer in viewers:
            viewer.closing = True
            if not viewer.pending:
                self._close(viewer)

    def _unwatch(self, term: _Terminal) -> None:
        if term.master >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(term.master)
            term.master = -1

    def _close(self, viewer: _Viewer) -> None:
        term = self._ttys.get(viewer.cid)
        if term is not None and viewer in term.viewers:
            term.viewers.remove(viewer)
        if viewer.sock.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(viewer.sock)
            viewer.sock.close()


def _readable(fd: int) -> bool:
    """Whether a read of ``fd`` returns at once (the master is blocking:
    its duplicates, which attachers write, are too)."""
    poll = select.poll()  # not select(): the supervisor holds many descriptors
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))
