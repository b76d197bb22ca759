"""The ``etcd_server`` fixture: a private etcd on free loopback ports.

It starts ``/usr/bin/etcd`` with its client and peer URLs on 127.0.0.1, a
temporary data dir and a unique name, waits until it answers, yields its
client URL (``http://127.0.0.1:PORT``) and stops it by PID in a teardown that
always runs. Import it from ``tests/conftest.py``::

    from etcd_fixture import etcd_server  # noqa: F401

Also here: ``etcd_cluster(3)``, a three-member cluster on loopback ports
(one member may be killed and started again), and ``etcd_tls()``, one member
that speaks only TLS and wants client certificates signed by a CA the
fixture makes with openssl (``EtcdCerts``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ETCD = "/usr/bin/etcd"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        conn: http.client.HTTPConnection
        if tls is not None:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=tls)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status == 200 and b'"true"' in resp.read()
        finally:
            conn.close()
    except OSError:
        return False


@dataclass(frozen=True)
class EtcdCerts:
    """PEM files made by openssl: a CA, the member's certificate (for
    127.0.0.1), a client certificate signed by the CA, and one signed by
    another CA (which the member must refuse)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(directory: Path) -> EtcdCerts:
    """A CA, a server and two client certificates in ``directory``."""
    d = directory
    for ca in ("ca", "rogue-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=cove test {ca}", "-keyout", str(d / f"{ca}-key.pem"),
            "-out", str(d / f"{ca}.pem"),
        )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ca, ext in (
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("rogue", "rogue-ca", "client.ext"),
    ):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=cove-{name}",
            "-keyout", str(d / f"{name}-key.pem"), "-out", str(d / f"{name}.csr"),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.pem"),
            "-CAkey", str(d / f"{ca}-key.pem"), "-CAcreateserial", "-days", "2",
            "-extfile", str(d / ext), "-out", str(d / f"{name}.pem"),
        )  # fmt: skip
    return EtcdCerts(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server-key.pem",
        client_cert=d / "client.pem",
        client_key=d / "client-key.pem",
        rogue_cert=d / "rogue.pem",
        rogue_key=d / "rogue-key.pem",
    )


@dataclass(frozen=True)
class EtcdLoad:
    """Counters from an etcd member's /metrics: gRPC calls started, by method
    (the JSON gateway's requests land there too: it is a gRPC client of its
    own member) and the bytes its client gRPC traffic carried."""

    calls: dict[str, float]
    received: float
    sent: float

    @classmethod
    def parse(cls, text: str) -> EtcdLoad:
        from prometheus_client.parser import text_string_to_metric_families

        calls: dict[str, float] = {}
        received = sent = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "grpc_server_started_total":
                    method = sample.labels.get("grpc_method", "?")
                    calls[method] = calls.get(method, 0.0) + sample.value
                elif sample.name == "etcd_network_client_grpc_received_bytes_total":
                    received += sample.value
                elif sample.name == "etcd_network_client_grpc_sent_bytes_total":
                    sent += sample.value
        return cls(calls, received, sent)

    def __sub__(self, other: EtcdLoad) -> EtcdLoad:
        keys = set(self.calls) | set(other.calls)
        calls = {k: self.calls.get(k, 0.0) - other.calls.get(k, 0.0) for k in keys}
        return EtcdLoad(
            {k: v for k, v in calls.items() if v},
            self.received - other.received,
            self.sent - other.sent,
        )

    @property
    def requests(self) -> float:
        return sum(self.calls.values())


class EtcdProcess:
    """One private etcd member that a test may kill (by the PID this
    started) and start again on the same ports and data."""

    def __init__(self, certs: EtcdCerts | None = None, token: str = "") -> None:
        self.name = "cv" + secrets.token_hex(3)
        self.data_dir = tempfile.mkdtemp(prefix=f"cove-etcd-{self.name}-")
        self.client, self.peer = _free_port(), _free_port()
        self.certs = certs
        scheme = "https" if certs is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client}"
        self.hostport = f"127.0.0.1:{self.client}"
        self.peer_url = f"http://127.0.0.1:{self.peer}"
        self.token = token or self.name
        self.initial_cluster = f"{self.name}={self.peer_url}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "etcd.log")

    def spawn(self) -> None:
        """Start the process; ``wait_healthy`` waits for it."""
        tls: list[str] = []
        if self.certs is not None:
            c = self.certs
            tls = [
                "--cert-file", str(c.server_cert), "--key-file", str(c.server_key),
                "--trusted-ca-file", str(c.ca), "--client-cert-auth",
            ]  # fmt: skip
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    ETCD,
                    "--name", self.name,
                    "--data-dir", os.path.join(self.data_dir, "data"),
                    "--listen-client-urls", self.url,
                    "--advertise-client-urls", self.url,
                    "--listen-peer-urls", self.peer_url,
                    "--initial-advertise-peer-urls", self.peer_url,
                    "--initial-cluster", self.initial_cluster,
                    "--initial-cluster-state", "new",
                    "--initial-cluster-token", self.token,
                    "--log-level", "warn",
                    *tls,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_healthy(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        ctx = self.certs.client_context() if self.certs is not None else None
        deadline = time.monotonic() + timeout
        while not _healthy(self.client, ctx):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(self.log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"etcd did not become healthy:\n{tail}")
            time.sleep(0.05)

    def start(self, timeout: float = 20.0) -> None:
        self.spawn()
        self.wait_healthy(timeout)

    def metrics(self) -> EtcdLoad:
        """What this member has served so far (its /metrics counters)."""
        ctx = self.certs.client_context() if self.certs is not None else None
        conn: http.client.HTTPConnection
        if ctx is not None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.client, timeout=5, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.client, timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return EtcdLoad.parse(text)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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


class EtcdCluster:
    """Members of one private cluster on loopback ports."""

    def __init__(self, size: int) -> None:
        token = "cvc" + secrets.token_hex(3)
        self.members = [EtcdProcess(token=token) for _ in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def store_url(self) -> str:
        """``etcd://a,b,c`` for ``--store``."""
        return "etcd://" + ",".join(m.hostport for m in self.members)

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        for m in self.members:
            m.spawn()  # together: none is healthy before a quorum is up
        for m in self.members:
            m.wait_healthy(timeout)

    def leader(self) -> EtcdProcess:
        """The member that leads now (asked through its status endpoint)."""
        for m in self.members:
            if not m.running:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                conn = http.client.HTTPConnection("127.0.0.1", m.client, timeout=2)
                try:
                    conn.request("POST", "/v3/maintenance/status", body="{}")
                    body = json.loads(conn.getresponse().read())
                finally:
                    conn.close()
                if body["leader"] == body["header"]["member_id"]:
                    return m
        raise RuntimeError("no member of the cluster leads")


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


@contextlib.contextmanager
def etcd_cluster(size: int = 3, timeout: float = 30.0) -> Iterator[EtcdCluster]:
    """Run a private cluster of ``size`` members; yields it; stops every
    member and removes their data even when the test fails."""
    if not os.path.exists(ETCD):
        pytest.skip("etcd-server is not installed")
    cluster = EtcdCluster(size)
    try:
        cluster.start(timeout)
        yield cluster
    finally:
        for m in cluster.members:
            m.stop()
        for m in cluster.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)


@contextlib.contextmanager
def etcd_tls(timeout: float = 20.0) -> Iterator[EtcdProcess]:
    """Run one member that wants TLS client certificates (``--client-cert-auth``,
    ``--trusted-ca-file``); its ``certs`` are the fixture's PEM files."""
    if not os.path.exists(ETCD):
        pytest.skip("etcd-server is not installed")
    certs_dir = Path(tempfile.mkdtemp(prefix="cove-etcd-certs-"))
    try:
        member = EtcdProcess(certs=make_certs(certs_dir))
        try:
            member.start(timeout)
            yield member
        finally:
            member.stop()
            shutil.rmtree(member.data_dir, ignore_errors=True)
    finally:
        shutil.rmtree(certs_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[str]:
    """A private etcd for the whole session; tests use unique key prefixes."""
    with run_etcd() as url:
        yield url
