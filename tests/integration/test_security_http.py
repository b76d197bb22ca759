"""The agent's HTTP surface as an attacker meets it (issue 10): a non-root
local user against every listener, a web page's cross-site and DNS-rebinding
requests, and TLS with certificates made here by openssl. Each agent runs in
a namespace of its own that plays the host; users, groups and files the
tests make are removed even when a test fails."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import cove
from agentproc import COVE, AgentProc
from conftest import cleanup_agent

pytestmark = pytest.mark.root

ATTACK = {"name": "pwn", "command": ["sleep", "30"]}
# The venv's interpreter (on Debian's python3, see the Makefile), which
# other users can run: the CLI needs the venv's packages (orjson).
USER_COVE = [sys.executable, "-m", "cove.cli.main"]
USER_ENV = {"PYTHONPATH": str(Path(cove.__file__).resolve().parents[1])}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


@contextlib.contextmanager
def local_user(*groups: str) -> Iterator[str]:
    """A non-root user with no home, in ``groups``; deleted afterwards."""
    name = "cvu" + secrets.token_hex(4)
    extra = ["-G", ",".join(groups)] if groups else []
    run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *extra, name)
    try:
        yield name
    finally:
        run("userdel", name, check=False)


@contextlib.contextmanager
def local_group() -> Iterator[str]:
    name = "cvg" + secrets.token_hex(4)
    run("groupadd", name)
    try:
        yield name
    finally:
        run("groupdel", name, check=False)


@contextlib.contextmanager
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's are root's alone), for
    the agent's socket, so only the socket's own mode decides."""
    path = Path(tempfile.mkdtemp(prefix="cvsock"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_user(
    user: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **USER_ENV, **(env or {})},
        cwd="/",
    )


def curl(user: str | None, *args: str) -> tuple[int, str]:
    """``curl`` as ``user`` (None: as root); the status and the body."""
    cmd = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20", *args]
    res = as_user(user, *cmd) if user else run(*cmd, check=False)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


def containers(agent: AgentProc) -> list[str]:
    return agent.ok("ps", "-aq").split()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with open_dir() as path:
        yield path


@pytest.fixture
def open_agent(hostns: str, tmp_path: Path, sock_dir: Path) -> Iterator[AgentProc]:
    proc = AgentProc(hostns, tmp_path)
    proc.socket = sock_dir / "agent.sock"
    proc.start()
    try:
        yield proc
    finally:
        cleanup_agent(proc)


def test_a_local_user_cannot_run_a_container_through_any_listener(open_agent: AgentProc) -> None:
    agent = open_agent
    with local_user() as user:
        url = f"http://127.0.0.1:{agent.http_port}/api/containers"
        status, body = curl(
            user, "-X", "POST", url, "-H", "Content-Type: application/json",
            "-d", json.dumps(ATTACK),
        )  # fmt: skip
        assert status == 403, body
        refusal = json.loads(body)
        assert refusal["kind"] == "permission_denied"
        assert str(agent.socket) in refusal["error"] and "--https" in refusal["error"]
        # Reads are refused as well: the native API is not on plain TCP at all.
        status, _ = curl(user, url)
        assert status == 403
        # The socket is root's alone.
        assert (os.stat(agent.socket).st_mode & 0o777) == 0o600
        res = as_user(user, *USER_COVE, "network", "ls", env={"COVE_SOCKET": str(agent.socket)})
        assert res.returncode == 8 and "permission denied" in res.stderr, res
        res = as_user(
            user, *USER_COVE, "run", "-d", "--name", "pwn2", "--", "true",
            env={"COVE_SOCKET": str(agent.socket)},
        )  # fmt: skip
        assert res.returncode == 8, res
    assert containers(agent) == []
    # Consul's API stays on TCP.
    status, _ = curl(None, f"http://127.0.0.1:{agent.http_port}/v1/agent/self")
    assert status == 200


def test_socket_group_members_may_use_the_cli(hostns: str, tmp_path: Path, sock_dir: Path) -> None:
    with local_group() as group, local_user(group) as member, local_user() as outsider:
        agent = AgentProc(hostns, tmp_path, "--socket-group", group)
        agent.socket = sock_dir / "agent.sock"
        agent.start()
        try:
            st = os.stat(agent.socket)
            assert (st.st_mode & 0o777) == 0o660 and st.st_uid == 0
            env = {"COVE_SOCKET": str(agent.socket)}
            agent.ok("network", "create", "grpnet", "--subnet", "10.123.0.0/24")
            res = as_user(member, *USER_COVE, "network", "ls", env=env)
            assert res.returncode == 0 and "grpnet" in res.stdout, res
            res = as_user(outsider, *USER_COVE, "network", "ls", env=env)
            assert res.returncode == 8 and "permission denied" in res.stderr, res
        finally:
            cleanup_agent(agent)


def test_unknown_socket_group_is_a_clear_start_up_error(hostns: str, tmp_path: Path) -> None:
    res = run(
        *COVE, "agent", "--state-dir", str(tmp_path / "s"), "--socket", str(tmp_path / "a.sock"),
        "--socket-group", "no-such-group-cv", check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert "unknown group 'no-such-group-cv'" in res.stderr
    assert not (tmp_path / "a.sock").exists()


def test_cross_site_and_rebinding_requests_are_refused(open_agent: AgentProc) -> None:
    agent = open_agent
    base = f"http://127.0.0.1:{agent.http_port}"
    service = json.dumps({"Name": "evil", "Port": 1})
    # A page's form-like POST: text/plain, a foreign Origin.
    status, body = curl(
        None, "-X", "PUT", f"{base}/v1/agent/service/register", "-H", "Origin: http://evil.example",
        "-H", "Content-Type: text/plain;charset=UTF-8", "-d", service,
    )  # fmt: skip
    assert status == 403 and "Origin" in json.loads(body)["error"]
    # The same body without Origin is still refused for its type in a POST
    # (the one state-changing method a page may send without a preflight).
    status, body = curl(
        None, "-X", "POST", f"{base}/v1/agent/service/register",
        "-H", "Content-Type: text/plain", "-d", service,
    )  # fmt: skip
    assert status == 415 and "Content-Type" in json.loads(body)["error"]
    # A rebound name: the page's own host name reaches the agent's address.
    status, body = curl(None, "-H", "Host: evil.example:8500", f"{base}/v1/kv/?recurse")
    assert status == 421 and "--http-allowed-host" in json.loads(body)["error"]
    status, body = curl(
        None, "-X", "PUT", "-H", "Host: evil.example", f"{base}/v1/kv/stolen", "-d", "x"
    )
    assert status == 421
    # Nothing changed; what curl -d sends (form-urlencoded) still works.
    status, services = agent.api("GET", "/v1/agent/services")
    assert status == 200 and "evil" not in json.dumps(services)
    status, _ = agent.api("GET", "/v1/kv/stolen")
    assert status == 404
    status, _ = curl(None, "-X", "PUT", f"{base}/v1/agent/service/register", "-d", service)
    assert status == 200
    status, _ = curl(
        None, "-X", "PUT", f"{base}/v1/kv/plain", "-H", "Content-Type: text/plain", "-d", "v"
    )
    assert status == 200


# -- TLS ---------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    run("openssl", *args)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA; two server certificates for 127.0.0.1 (CN server1, server2);
    a client certificate; all signed by the CA."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2",
        "-subj", "/CN=cove test CA",
    )  # fmt: skip
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    cext = d / "client.ext"
    cext.write_text("extendedKeyUsage=clientAuth\n")
    for name, extfile in (("server1", ext), ("server2", ext), ("client", cext)):
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
            "-subj", f"/CN={name}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(extfile), "-out", str(d / f"{name}.pem"),
        )  # fmt: skip
    return {p.stem if p.suffix == ".pem" else p.name: p for p in d.iterdir()}


def served_cn(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert()
    assert cert is not None
    subject = dict(item for rdn in cert["subject"] for item in rdn)
    return str(subject["commonName"])


def https_get(port: int, path: str, ctx: ssl.SSLContext) -> int:
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "pki"
    d.mkdir()
    return make_pki(d)


def tls_agent(hostns: str, tmp_path: Path, pki: dict[str, Path], *extra: str) -> AgentProc:
    live = tmp_path / "live"
    live.mkdir(exist_ok=True)
    shutil.copy(pki["server1"], live / "cert.pem")
    shutil.copy(pki["server1.key"], live / "key.pem")
    agent = AgentProc(
        hostns, tmp_path, "--https", "127.0.0.1:8501", "--tls-cert", str(live / "cert.pem"),
        "--tls-key", str(live / "key.pem"), "--tls-ca", str(pki["ca"]), *extra,
    )  # fmt: skip
    agent.start()
    return agent


def test_https_with_the_ca_cli_over_tls_and_certificate_reload(
    hostns: str, tmp_path: Path, pki: dict[str, Path]
) -> None:
    agent = tls_agent(hostns, tmp_path, pki)
    try:
        ca_ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        assert https_get(8501, "/v1/agent/self", ca_ctx) == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            https_get(8501, "/v1/agent/self", ssl.create_default_context())
        remote = ["--host", "https://127.0.0.1:8501"]
        res = agent.cli(*remote, "--tls-ca", str(pki["ca"]), "kv", "put", "tls/key", "v1")
        assert res.returncode == 0, res.stderr
        res = agent.cli(*remote, "kv", "get", "tls/key")  # no CA: the CLI refuses the agent
        assert res.returncode == 8 and "--tls-ca" in res.stderr, res.stderr
        # The native API over HTTPS: refused without ACLs, the message says why.
        res = agent.cli(*remote, "--tls-ca", str(pki["ca"]), "--token", "t", "network", "ls")
        assert res.returncode == 7 and "--acl-enabled" in res.stderr, res.stderr
        # A local user with the CA, over HTTPS: the native API stays shut.
        with local_user() as user, open_dir() as d:
            shutil.copy(pki["ca"], d / "ca.pem")
            (d / "ca.pem").chmod(0o644)
            status, body = curl(
                user, "--cacert", str(d / "ca.pem"), "-X", "POST",
                "https://127.0.0.1:8501/api/containers", "-H", "Content-Type: application/json",
                "-H", "X-Consul-Token: guessed", "-d", json.dumps(ATTACK),
            )  # fmt: skip
            assert status == 403 and "--acl-enabled" in json.loads(body)["error"], body
            status, _ = curl(
                user, "--cacert", str(d / "ca.pem"), "https://127.0.0.1:8501/v1/agent/self"
            )
            assert status == 200
        assert containers(agent) == []
        # Plain TCP through the CLI: refused, naming the socket.
        res = agent.cli("--host", "http://127.0.0.1:8500", "network", "ls")
        assert res.returncode == 7 and str(agent.socket) in res.stderr, res.stderr

        assert served_cn(8501, pki["ca"]) == "server1"
        live = tmp_path / "live"
        shutil.copy(pki["server2"], live / "cert.pem")
        shutil.copy(pki["server2.key"], live / "key.pem")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served_cn(8501, pki["ca"]) != "server2" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served_cn(8501, pki["ca"]) == "server2"
        # A broken file on reload: logged, the previous certificate kept.
        (live / "cert.pem").write_text("not a certificate\n")
        agent.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS reload failed" not in agent.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "TLS reload failed" in agent.log_text()
        assert served_cn(8501, pki["ca"]) == "server2"
        assert agent.proc.poll() is None
    finally:
        cleanup_agent(agent)


def test_verify_incoming_requires_a_client_certificate(
    hostns: str, tmp_path: Path, pki: dict[str, Path]
) -> None:
    agent = tls_agent(hostns, tmp_path, pki, "--tls-verify-incoming")
    try:
        bare = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_get(8501, "/v1/agent/self", bare)
        with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
        with_cert.load_cert_chain(pki["client"], pki["client.key"])
        assert https_get(8501, "/v1/agent/self", with_cert) == 200
        base = ["--host", "https://127.0.0.1:8501", "--tls-ca", str(pki["ca"])]
        res = agent.cli(*base, "kv", "put", "k", "v")
        assert res.returncode == 8 and "--tls-cert" in res.stderr, res.stderr
        res = agent.cli(
            *base, "--tls-cert", str(pki["client"]), "--tls-key", str(pki["client.key"]),
            "kv", "put", "k", "v",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    finally:
        cleanup_agent(agent)


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("missing.pem", "server1.key", "does not exist: check --tls-cert"),
        ("server1", "server2.key", "does not match certificate"),
        ("server1", "server1.csr", "cannot load TLS certificate"),
        ("server1", ".", "is not a readable file: check --tls-key"),
    ],
)
def test_bad_certificate_files_are_start_up_errors(
    hostns: str, tmp_path: Path, pki: dict[str, Path], cert: str, key: str, message: str
) -> None:
    cert_path = pki.get(cert, tmp_path / cert)
    key_path = pki["ca"].parent if key == "." else pki[key]
    res = run(
        *COVE, "agent", "--state-dir", str(tmp_path / "s"), "--socket", str(tmp_path / "a.sock"),
        "--http", "off", "--dns", "off", "--https", "127.0.0.1:8501",
        "--tls-cert", str(cert_path), "--tls-key", str(key_path), check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert message in res.stderr, res.stderr


def test_native_api_over_https_follows_operator_rights(
    hostns: str, tmp_path: Path, pki: dict[str, Path]
) -> None:
    mgmt = "5b1f6a52-mgmt-secret"
    agent = tls_agent(
        hostns, tmp_path, pki, "--acl-enabled", "--acl-default-policy", "deny",
        "--acl-initial-management", mgmt,
    )  # fmt: skip
    try:
        remote = ["--host", "https://127.0.0.1:8501", "--tls-ca", str(pki["ca"])]
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))

        def acl_put(path: str, body: dict[str, object]) -> dict[str, object]:
            req = urllib.request.Request(
                f"https://127.0.0.1:8501{path}", data=json.dumps(body).encode(), method="PUT",
                headers={"X-Consul-Token": mgmt, "Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                out: dict[str, object] = json.loads(resp.read())
                return out

        acl_put("/v1/acl/policy", {"Name": "ops-read", "Rules": 'operator = "read"'})
        reader = str(acl_put("/v1/acl/token", {"Policies": [{"Name": "ops-read"}]})["SecretID"])

        res = agent.cli(*remote, "--token", mgmt, "network", "create", "tlsnet")
        assert res.returncode == 0, res.stderr
        res = agent.cli(*remote, "--token", reader, "network", "ls")
        assert res.returncode == 0 and "tlsnet" in res.stdout, res.stderr
        res = agent.cli(*remote, "--token", reader, "network", "rm", "tlsnet")
        assert res.returncode == 7, res.stderr
        res = agent.cli(*remote, "network", "ls")  # no token at all
        assert res.returncode == 7, res.stderr
        res = agent.cli("network", "ls")  # the socket needs no token
        assert "tlsnet" in res.stdout
        agent.cli("network", "rm", "tlsnet")
    finally:
        cleanup_agent(agent)
