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


@contextlib.contextmanager
def run_etcd(timeout: float = 20.0) -> Iterator[str]:
    """Run a private etcd; yields its client URL."""
    if not os.path.exists(ETCD):
        pytest.skip("etcd-server is not installed")
    name = "cv" + secrets.token_hex(3)
    data_dir = tempfile.mkdtemp(prefix=f"cove-etcd-{name}-")
    client, peer = _free_port(), _free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log_path = os.path.join(data_dir, "etcd.log")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                ETCD,
                "--name",
                name,
                "--data-dir",
                os.path.join(data_dir, "data"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"{name}={peer_url}",
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                name,
                "--log-level",
                "warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(client):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"etcd did not become healthy:\n{tail}")
            time.sleep(0.05)
        yield client_url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[str]:
    """A private etcd for the whole session; tests use unique key prefixes."""
    with run_etcd() as url:
        yield url
