"""The ``etcd_server`` fixture: a private etcd on free loopback ports.

It starts ``/usr/bin/etcd`` with its client and peer URLs on 127.0.0.1, a
temporary data dir and a unique name, waits until it answers, yields its
client URL (``http://127.0.0.1:PORT``) and stops it by PID in a teardown that
always runs. Import it from ``tests/conftest.py``::

    from etcd_fixture import etcd_server  # noqa: F401
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

ETCD = "/usr/bin/etcd"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status == 200 and b'"true"' in resp.read()
        finally:
            conn.close()
    except OSError:
        return False


class EtcdProcess:
    """One private etcd member that a test may kill (by the PID this
    started) and start again on the same ports and data."""

    def __init__(self) -> None:
        self.name = "cv" + secrets.token_hex(3)
        self.data_dir = tempfile.mkdtemp(prefix=f"cove-etcd-{self.name}-")
        self.client, self.peer = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.client}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        peer_url = f"http://127.0.0.1:{self.peer}"
        log_path = os.path.join(self.data_dir, "etcd.log")
        with open(log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    ETCD,
                    "--name", self.name,
                    "--data-dir", os.path.join(self.data_dir, "data"),
                    "--listen-client-urls", self.url,
                    "--advertise-client-urls", self.url,
                    "--listen-peer-urls", peer_url,
                    "--initial-advertise-peer-urls", peer_url,
                    "--initial-cluster", f"{self.name}={peer_url}",
                    "--initial-cluster-state", "new",
                    "--initial-cluster-token", self.name,
                    "--log-level", "warn",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _healthy(self.client):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"etcd did not become healthy:\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9, as a crashed member."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def etcd_process(timeout: float = 20.0) -> Iterator[EtcdProcess]:
    """Run a private etcd; yields it; stops it and removes its data even
    when the test fails."""
    if not os.path.exists(ETCD):
        pytest.skip("etcd-server is not installed")
    member = EtcdProcess()
    try:
        member.start(timeout)
        yield member
    finally:
        member.stop()
        shutil.rmtree(member.data_dir, ignore_errors=True)


@contextlib.contextmanager
def run_etcd(timeout: float = 20.0) -> Iterator[str]:
    """Run a private etcd; yields its client URL."""
    with etcd_process(timeout) as member:
        yield member.url


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[str]:
    """A private etcd for the whole session; tests use unique key prefixes."""
    with run_etcd() as url:
        yield url
