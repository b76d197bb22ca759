"""The stdio of an interactive container (``run -t`` and/or ``-i``), as the
supervisor makes and keeps it.

``-t``: the container's init opens a terminal in its own ``/dev/pts`` (after
``pivot_root``, so its name is valid inside, and before dropping root, so it
can give the terminal to the container's user), makes it its controlling
terminal and stdio, and sends the master back to the supervisor over the
start's report socket (SCM_RIGHTS, as runc's ``--console-socket``). The
supervisor holds the master for the container's life, so the container never
sees a hang-up when a client goes, and hands a duplicate to every attacher
(``runtime.attach``): the client reads and writes the terminal itself, with no
byte relayed by the supervisor, and resizes it with an ioctl of its own.

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
import socket
import struct
import termios
from dataclasses import dataclass

ATTACH_OP = "attach"  # the supervisor's request that hands the held ends over


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
