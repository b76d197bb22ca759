"""A network namespace that plays the host for a benchmark, shared by the
benchmark scripts (each is run as ``python bench/X/run.py`` and puts this
folder on its path)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator

from cove.linux import CLONE_NEWNET, setns


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def kill_processes_in(name: str) -> None:
    """End what a benchmark left running in namespace ``name``: processes it
    started there (an agent, a supervisor, containers' init)."""
    ino = os.stat(f"/run/netns/{name}").st_ino
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino == ino:
                os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def host_namespace() -> Iterator[str]:
    """A fresh namespace that plays the host for this thread and its
    children; removed, with whatever still runs in it, even on failure."""
    name = "cvb" + secrets.token_hex(4)
    ip("netns", "add", name)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(target, CLONE_NEWNET)
        ip("link", "set", "lo", "up")
        yield name
    finally:
        setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)
        with contextlib.suppress(OSError):
            kill_processes_in(name)
        ip("netns", "del", name, check=False)
