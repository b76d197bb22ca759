"""A network namespace that plays the host for a benchmark, and an agent
started in it, shared by the benchmark scripts (each is run as
``python bench/X/run.py`` and puts this folder on its path)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cove.cli.client import AgentClient
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


def start_agent(
    work: Path, http: str = "127.0.0.1:18500", dns: str = "127.0.0.1:18600"
) -> tuple[subprocess.Popen[bytes], AgentClient]:
    """An agent with its state, socket and log under ``work`` (in the
    namespace the caller is in), once it answers; exits naming its log's
    end when it does not start within 30 s."""
    sock = work / "agent.sock"
    log = open(work / "agent.log", "ab")  # noqa: SIM115 - lives as long as the agent
    proc = subprocess.Popen(
        [sys.executable, "-m", "cove.cli.main", "agent", "--state-dir", str(work / "state"),
         "--socket", str(sock), "--http", http, "--dns", dns,
         "--upstream", "127.0.0.1:5399", "--log-level", "warning"],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    client = AgentClient(sock, timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            client.request("GET", "/api/health")
            return proc, client
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit("the agent did not start: " + (work / "agent.log").read_text()[-2000:])
