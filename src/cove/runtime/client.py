"""The agent's side of the supervisor: start it when it is not running, find
it again after an agent restart (its socket in the run directory), and send
it requests."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cove.errors import CoveError, Unavailable, from_json
from cove.runtime.launch import LaunchSpec
from cove.runtime.state import ProcessState
from cove.runtime.supervisor import SOCKET, WATCH_OP

log = logging.getLogger(__name__)


class SupervisorClient:
    """Thread-safe: every request uses its own connection."""

    def __init__(self, root: Path, python: str = sys.executable, timeout: float = 60.0) -> None:
        self.root = root
        self._python = python
        self._timeout = timeout

    @property
    def socket_path(self) -> Path:
        return self.root / SOCKET

    def ensure_running(self) -> int:
        """The supervisor's pid, starting it first if needed."""
        try:
            return int(self._call({"op": "ping"}, retry=False)["pid"])
        except Unavailable:
            pass
        proc = subprocess.run(
            [self._python, "-m", "cove.runtime.supervisor", "--root", str(self.root)],
            stdin=subprocess.DEVNULL,
            # A clean environment: the supervisor outlives this agent and
            # should not carry its settings along.
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode != 0:
            raise Unavailable(f"cannot start the supervisor: {proc.stderr.strip()[-500:]}")
        pid = int(self._call({"op": "ping"})["pid"])
        log.info("supervisor running, pid %s", pid)
        return pid

    def create(self, spec: LaunchSpec) -> ProcessState:
        return ProcessState.from_json(self._call({"op": "create", "spec": spec.to_json()})["state"])

    def start(self, cid: str) -> ProcessState:
        return ProcessState.from_json(self._call({"op": "start", "id": cid})["state"])

    def stop(self, cid: str, timeout: float) -> ProcessState:
        answer = self._call({"op": "stop", "id": cid, "timeout": timeout}, wait=timeout + 30)
        return ProcessState.from_json(answer["state"])

    def remove(self, cid: str) -> None:
        try:
            self._call({"op": "remove", "id": cid})
        except CoveError as exc:
            if exc.kind != "not_found":
                raise

    def kill(self, cid: str, sig: int) -> None:
        self._call({"op": "kill", "id": cid, "signal": sig})

    def states(self) -> dict[str, ProcessState]:
        answer = self._call({"op": "list"})
        return {s["id"]: ProcessState.from_json(s) for s in answer["states"]}

    def state(self, cid: str) -> ProcessState | None:
        """One container's state, or None if the supervisor has no such
        container. (A supervisor from before ``ids`` answers with all.)"""
        answer = self._call({"op": "list", "ids": [cid]})
        found = [s for s in answer["states"] if s.get("id") == cid]
        return ProcessState.from_json(found[0]) if found else None

    def follow(self) -> StateFeed:
        """A connection that is sent each state a container takes, as the
        supervisor saves it. ``Unavailable`` when it cannot be opened (not
        running, or a supervisor from before ``watch``)."""
        return StateFeed(self.socket_path)

    def shutdown(self) -> None:
        """Stop the supervisor and kill every container (tests, uninstall)."""
        try:
            self._call({"op": "shutdown"}, retry=False)
        except Unavailable:
            return

    def _call(
        self, request: dict[str, Any], *, retry: bool = True, wait: float | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + (2.0 if retry else 0.0)
        while True:
            try:
                return self._once(request, wait or self._timeout)
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                if time.monotonic() >= deadline:
                    raise Unavailable(f"the supervisor is not running ({exc})") from exc
                time.sleep(0.05)
            except OSError as exc:
                raise Unavailable(f"lost the connection to the supervisor: {exc}") from exc

    def _once(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks: list[bytes] = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        raw = b"".join(chunks)
        if not raw:
            raise Unavailable("the supervisor closed the connection without an answer")
        answer: dict[str, Any] = json.loads(raw)
        if not answer.get("ok"):
            raise from_json(answer)
        return answer


class StateFeed:
    """The supervisor's ``watch`` connection: iterate for ``(container name,
    state)`` in the order the states were taken; the iteration ends when
    the supervisor goes (or ``close`` is called, from any thread)."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(5.0)
            self._sock.connect(str(path))
            self._sock.sendall(json.dumps({"op": WATCH_OP}).encode() + b"\n")
            self._lines = self._sock.makefile("rb")
            first = json.loads(self._lines.readline() or b"{}")
            if not first.get("ok"):
                raise from_json(first) if first else Unavailable("the supervisor closed")
            self._sock.settimeout(None)  # idle for as long as nothing changes
        except (OSError, ValueError) as exc:
            self._sock.close()
            raise Unavailable(f"cannot follow the supervisor: {exc}") from exc
        except CoveError:
            self._sock.close()
            raise

    def __iter__(self) -> Iterator[tuple[str, ProcessState]]:
        try:
            while True:
                try:
                    line = self._lines.readline()
                except OSError:
                    return
                if not line:
                    return
                try:
                    data = json.loads(line)
                    yield str(data.get("name") or ""), ProcessState.from_json(data["state"])
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("ignoring a bad line from the supervisor: %s", exc)
        finally:
            self._lines.close()
            self._sock.close()

    def close(self) -> None:
        """Ends the iteration (from another thread too)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
