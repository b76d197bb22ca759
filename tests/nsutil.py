"""Network namespaces for tests: create, enter (this thread only), remove.

``setns`` moves only the calling thread, and processes it forks inherit the
namespace, so a test that enters a namespace sees it as "the host" and every
agent, dig or getent it starts runs there too, while the real host's network
stays untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def unique(prefix: str = "cvt") -> str:
    return prefix + secrets.token_hex(4)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with this thread inside namespace ``name``."""
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(target)
        yield
    finally:
        setns(orig)
        os.close(orig)
        os.close(target)


def inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def kill_processes_in(name: str) -> list[int]:
    """SIGKILL every process whose network namespace is ``name`` (all of
    them were started by the test that made the namespace)."""
    ino = inode(name)
    me = os.getpid()
    killed: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino == ino:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return killed


@contextlib.contextmanager
def namespace(prefix: str = "cvt") -> Iterator[str]:
    """A fresh namespace with loopback up, removed afterwards (with whatever
    processes still run in it)."""
    name = unique(prefix)
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            kill_processes_in(name)
        run("ip", "netns", "del", name, check=False)
