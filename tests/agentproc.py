"""A real `cove agent` process for integration tests, in a host namespace of
its own, with its own state directory, socket and ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cove.cli.client import _UnixConnection

COVE = [sys.executable, "-m", "cove.cli.main"]


class AgentProc:
    def __init__(self, hostns: str, workdir: Path, *extra: str) -> None:
        self.hostns = hostns
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.socket = workdir / "sock" / "agent.sock"
        self.log = workdir / "agent.log"
        self.http_port = 8500
        self.dns_port = 8600
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "COVE_SOCKET": str(self.socket)}

    def start(
        self,
        *extra: str,
        timeout: float = 20.0,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """``env``: variables added to the agent's environment (a test
        fault, say); ``prefix``: a command the agent runs under (``prlimit``)."""
        args = [
            *prefix,
            *COVE,
            "agent",
            "--state-dir", str(self.state_dir),
            "--socket", str(self.socket),
            "--http", f"127.0.0.1:{self.http_port}",
            "--dns", f"127.0.0.1:{self.dns_port}",
            # The test's own namespace has no route out; name a loopback
            # upstream anyway so nothing is ever sent to the real resolvers.
            "--upstream", "127.0.0.1:5399",
            "--log-level", "debug",
            "--reconcile-interval", "2",
            *self.extra,
            *extra,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
            res = self.cli("network", "ls", "-q")
            if res.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"agent did not come up:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COVE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        res = self.cli(*args)
        assert res.returncode == 0, f"cove {' '.join(args)} failed ({res.returncode}): {res.stderr}"
        return res.stdout

    def output(self, name: str) -> str:
        """A container's output as ``cove logs NAME`` prints it, its stdout
        then its stderr (which ``cove logs`` writes to stderr, as docker)."""
        res = self.cli("logs", name)
        assert res.returncode == 0, f"cove logs {name} failed ({res.returncode}): {res.stderr}"
        return res.stdout + res.stderr

    def api(self, method: str, path: str, json_body: Any = None) -> tuple[int, Any]:
        """The native API (/api) over the agent's socket, as an admin would;
        anything else over TCP, as an HTTP client on the host would (this
        thread must be in the agent's host namespace, as tests are)."""
        data = json.dumps(json_body).encode() if json_body is not None else None
        if path.startswith("/api/"):
            conn = _UnixConnection(str(self.socket), 30)
            try:
                headers = {"Content-Type": "application/json"} if data is not None else {}
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            with contextlib.suppress(ValueError):
                return resp.status, json.loads(body) if body else None
            return resp.status, body.decode(errors="replace")
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read()
                return resp.status, json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            body = exc.read()
            with contextlib.suppress(ValueError):
                return exc.code, json.loads(body)
            return exc.code, body.decode(errors="replace")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
