"""``cove exec``: run a command inside a running container with the same
restrictions as its init (capabilities, no_new_privs, seccomp), in its
namespaces and under its root, so it sees exactly the container's view (its
rootfs after ``pivot_root``, or the host's tree with the agent's files
hidden).

The CLI process stays in the host's namespaces and waits: it forks after
joining the PID namespace (which applies to children only), and the child
joins the rest, confines itself and execs. The user's terminal and stdin go
straight to the command, with no relay.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from cove import linux
from cove.runtime import devices, security, users

_NAMESPACES = (
    ("net", linux.CLONE_NEWNET),
    ("uts", linux.CLONE_NEWUTS),
    ("ipc", linux.CLONE_NEWIPC),
    ("mnt", linux.CLONE_NEWNS),
)


def run(
    pid: int,
    argv: Sequence[str],
    env: Mapping[str, str],
    workdir: str,
    caps: frozenset[str],
    seccomp: bool,
    user: str = "",
) -> int:
    """Runs ``argv`` in the container whose init is ``pid``; returns its
    exit code (128 + N when killed by signal N). Raises ``OSError`` when
    the container cannot be entered (it has stopped)."""
    program = security.compile_seccomp(caps) if seccomp else None
    fds: list[tuple[int, int]] = []
    root = -1
    pidns = -1
    try:
        for name, kind in _NAMESPACES:
            fds.append((os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), kind))
        pidns = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        linux.setns(pidns, linux.CLONE_NEWPID)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            _child(fds, root, argv, env, workdir, caps, program, user)
    finally:
        for fd, _ in fds:
            os.close(fd)
        for fd in (root, pidns):
            if fd >= 0:
                os.close(fd)
    # The terminal's ^C and ^\\ reach the command (same process group); the
    # waiting parent must outlive it to report its status.
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: _forward(child, signum))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


def _child(
    fds: list[tuple[int, int]],
    root: int,
    argv: Sequence[str],
    env: Mapping[str, str],
    workdir: str,
    caps: frozenset[str],
    program: bytes | None,
    user: str = "",
) -> NoReturn:  # pragma: no cover
    try:
        if not devices.join():
            caps = caps - {"MKNOD"}
        for fd, kind in fds:
            linux.setns(fd, kind)
        os.fchdir(root)
        os.chroot(".")
        os.chdir(workdir)
        identity = users.lookup(user) if user else None
        security.confine(caps, program)
        if identity is not None:
            users.switch(identity)  # after confine: no capability is left
        os.execvpe(argv[0], list(argv), dict(env))
    except LookupError as exc:
        code = 126
        with contextlib.suppress(OSError):
            os.write(2, f"cove: cannot run {argv[0]!r}: {exc}\n".encode())
        os._exit(code)
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        with contextlib.suppress(OSError):
            os.write(2, f"cove: cannot run {argv[0]!r}: {exc.strerror or exc}\n".encode())
    os._exit(code)
