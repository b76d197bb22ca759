"""Consul's ACL system through py-consul (and raw HTTP where a header or a
status is the point) against a real `cove agent`, each in a network
namespace of its own that plays the host."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentproc import COVE, AgentProc
from conftest import cleanup_agent
from etcd_fixture import etcd_process

consul = pytest.importorskip("consul")
dns_message = pytest.importorskip("dns.message")
dns_query = pytest.importorskip("dns.query")

pytestmark = pytest.mark.root

ROOT = "3f0c9a52-7e1d-4c3b-8f6a-0b9e2d4c5a17"


def http(
    agent: AgentProc, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{agent.http_port}{path}", data=data, method=method
    )
    if token is not None:
        req.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@dataclass(frozen=True)
class Backend:
    """Where the ACL agents keep their state: flags for the agent, and the
    files a secret must never appear in."""

    flags: tuple[str, ...]
    data_dir: Path | None  # etcd's; None: the agent's own SQLite files

    def files(self, agent: AgentProc) -> list[Path]:
        if self.data_dir is None:
            return sorted(agent.state_dir.glob("state.db*"))
        return sorted(p for p in self.data_dir.rglob("*") if p.is_file())


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def backend(request: pytest.FixtureRequest, hostns: str) -> Iterator[Backend]:
    """The ACL agents run on SQLite and on etcd (started in the test's host
    namespace, after ``hostns``, so the agent reaches it on loopback)."""
    if request.param == "sqlite":
        yield Backend((), None)
        return
    with etcd_process() as member:
        url = "etcd://" + member.url.removeprefix("http://")
        yield Backend(("--store", url), Path(member.data_dir))


def _agent(hostns: str, workdir: Path, backend: Backend, *flags: str) -> Iterator[AgentProc]:
    proc = AgentProc(hostns, workdir, *backend.flags, *flags)
    proc.start()
    try:
        yield proc
    finally:
        cleanup_agent(proc)


@pytest.fixture
def deny_agent(hostns: str, tmp_path: Path, backend: Backend) -> Iterator[AgentProc]:
    yield from _agent(hostns, tmp_path, backend, "--acl-enabled", "--acl-default-policy", "deny")


@pytest.fixture
def managed_agent(hostns: str, tmp_path: Path, backend: Backend) -> Iterator[AgentProc]:
    yield from _agent(
        hostns,
        tmp_path,
        backend,
        "--acl-enabled",
        "--acl-default-policy",
        "deny",
        "--acl-initial-management",
        ROOT,
    )


def client(agent: AgentProc, token: str | None = None) -> Any:
    return consul.Consul(host="127.0.0.1", port=agent.http_port, token=token)


def test_acls_off_answer_401_and_ignore_tokens(agent: AgentProc) -> None:
    with pytest.raises(consul.ACLDisabled):
        client(agent).acl.tokens.list()
    for method, path in (("GET", "/v1/acl/policies"), ("PUT", "/v1/acl/bootstrap")):
        status, _, body = http(agent, method, path)
        assert (status, body) == (401, b"ACL support disabled")
    # As before ACLs existed: any token, even a bogus one, may write.
    assert client(agent, token="bogus").kv.put("free/x", "1")


def test_bootstrap_policies_roles_tokens(deny_agent: AgentProc) -> None:
    anon = client(deny_agent)
    boot = anon.acl.bootstrap()
    root = boot["SecretID"]
    with pytest.raises(consul.ACLPermissionDenied):
        anon.acl.bootstrap()
    mgmt = client(deny_agent, token=root)
    # py-consul sends rules in Consul's JSON form.
    policy = mgmt.acl.policy.create(
        name="app-writer", rules={"key_prefix": {"app/": {"policy": "write"}}}
    )
    role = mgmt.acl.role.create(name="app-role", policies_id=[policy["ID"]])
    token = mgmt.acl.token.create(description="app", roles_name=["app-role"])
    assert token["Roles"] == [{"ID": role["ID"], "Name": "app-role"}]
    app = client(deny_agent, token=token["SecretID"])

    assert app.kv.put("app/x", "1")
    with pytest.raises(consul.ACLPermissionDenied):
        app.kv.put("other/x", "1")
    status, _, body = http(deny_agent, "PUT", "/v1/kv/other/x", "1", token=token["SecretID"])
    assert status == 403 and body.startswith(b"Permission denied")
    assert mgmt.kv.put("other/y", "2")

    # Lists show only what the token may read, and say so.
    _, keys = mgmt.kv.get("", keys=True)
    assert keys == ["app/x", "other/y"]
    _, keys = app.kv.get("", keys=True)
    assert keys == ["app/x"]
    status, headers, _ = http(deny_agent, "GET", "/v1/kv/?recurse", token=token["SecretID"])
    assert status == 200 and headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    status, headers, _ = http(deny_agent, "GET", "/v1/kv/?recurse", token=root)
    assert "X-Consul-Results-Filtered-By-ACLs" not in headers

    # The same token by the other two ways Consul accepts.
    req = urllib.request.Request(
        f"http://127.0.0.1:{deny_agent.http_port}/v1/kv/app/x?raw",
        headers={"Authorization": f"Bearer {token['SecretID']}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.read() == b"1"
    status, _, body = http(deny_agent, "GET", f"/v1/kv/app/x?raw&token={token['SecretID']}")
    assert (status, body) == (200, b"1")

    # A token reads itself; an app token may not manage ACLs.
    assert app.acl.token.read_self()["AccessorID"] == token["AccessorID"]
    with pytest.raises(consul.ACLPermissionDenied):
        app.acl.tokens.list()
    listed = {t["AccessorID"]: t for t in mgmt.acl.tokens.list()}
    assert listed[token["AccessorID"]]["SecretID"] == "<hidden>"

    clone = mgmt.acl.token.clone(token["AccessorID"], description="copy")
    assert client(deny_agent, token=clone["SecretID"]).kv.put("app/y", "1")
    assert mgmt.acl.token.delete(clone["AccessorID"])
    with pytest.raises(consul.ACLPermissionDenied):
        client(deny_agent, token=clone["SecretID"]).kv.put("app/z", "1")


def test_bogus_token_is_refused(deny_agent: AgentProc) -> None:
    status, _, body = http(deny_agent, "PUT", "/v1/kv/x", "1", token="no-such-token")
    assert (status, body) == (403, b"ACL not found")
    status, _, body = http(deny_agent, "GET", "/v1/catalog/services", token="no-such-token")
    assert (status, body) == (403, b"ACL not found")
    status, _, _ = http(deny_agent, "GET", "/v1/status/leader", token="no-such-token")
    assert status == 200


def test_malformed_policy_is_400_and_creates_nothing(managed_agent: AgentProc) -> None:
    mgmt = client(managed_agent, token=ROOT)
    before = mgmt.acl.policy.list()
    status, _, body = http(
        managed_agent,
        "PUT",
        "/v1/acl/policy",
        {"Name": "broken", "Rules": 'key_prefix "a/" { policy = "sometimes" }'},
        token=ROOT,
    )
    assert status == 400 and b"sometimes" in body
    status, _, body = http(
        managed_agent,
        "PUT",
        "/v1/acl/policy",
        {"Name": "broken", "Rules": 'key_prefix "a/" { policy = '},
        token=ROOT,
    )
    assert status == 400 and b"Failed to parse ACL rules" in body
    assert mgmt.acl.policy.list() == before


def test_secrets_are_not_in_the_log_or_the_store(
    managed_agent: AgentProc, backend: Backend
) -> None:
    mgmt = client(managed_agent, token=ROOT)
    pol = mgmt.acl.policy.create(name="kv", rules={"key_prefix": {"": {"policy": "write"}}})
    tok = mgmt.acl.token.create(policies_id=[pol["ID"]])
    assert client(managed_agent, token=tok["SecretID"]).kv.put("k", "v")
    assert http(managed_agent, "PUT", "/v1/kv/k", "v", token="wrong-secret")[0] == 403
    managed_agent.stop()
    log = managed_agent.log.read_bytes()
    stored = b"".join(p.read_bytes() for p in backend.files(managed_agent))
    assert b"kv" in stored  # the store was read: the policy's name is there
    for secret in (ROOT, tok["SecretID"], "wrong-secret"):
        assert secret.encode() not in log
        assert secret.encode() not in stored


def _dns_a(agent: AgentProc, name: str) -> list[str]:
    query = dns_message.make_query(name, "A")
    answer = dns_query.udp(query, "127.0.0.1", port=agent.dns_port, timeout=3)
    return sorted(str(rr) for rrset in answer.answer for rr in rrset)


def test_default_deny_hides_services_from_anonymous_reads_and_dns(
    managed_agent: AgentProc,
) -> None:
    mgmt = client(managed_agent, token=ROOT)
    mgmt.agent.service.register("web", service_id="web1", address="10.0.0.7", port=80)
    _, services = mgmt.catalog.services()
    assert "web" in services
    assert _dns_a(managed_agent, "web.service.cove") == []

    anon = client(managed_agent)
    _, services = anon.catalog.services()
    assert "web" not in services
    _, nodes = anon.health.service("web")
    assert nodes == []
    status, headers, _ = http(managed_agent, "GET", "/v1/catalog/services")
    assert status == 200 and headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    with pytest.raises(consul.ACLPermissionDenied):
        anon.agent.service.register("evil", address="10.0.0.9", port=1)

    # Give the anonymous token read on services and nodes: DNS and the
    # catalog answer at once (the ACL change invalidates cached answers).
    rules = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'
    status, _, body = http(
        managed_agent, "PUT", "/v1/acl/policy", {"Name": "anon-read", "Rules": rules}, token=ROOT
    )
    assert status == 200, body
    pol = json.loads(body)
    mgmt.acl.token.update("00000000-0000-0000-0000-000000000002", policies_id=[pol["ID"]])
    deadline = time.monotonic() + 5
    while _dns_a(managed_agent, "web.service.cove") != ["10.0.0.7"]:
        assert time.monotonic() < deadline, "DNS did not follow the anonymous token's policy"
        time.sleep(0.1)
    _, services = anon.catalog.services()
    assert "web" in services


def test_cli_uses_consul_http_token(managed_agent: AgentProc) -> None:
    denied = managed_agent.cli("kv", "put", "cli/x", "1")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    env = {**managed_agent.env, "CONSUL_HTTP_TOKEN": ROOT}
    res = subprocess.run(
        [*COVE, "kv", "put", "cli/x", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert client(managed_agent, token=ROOT).kv.get("cli/x")[1]["Value"] == b"1"


def test_agent_default_token_serves_tokenless_requests(managed_agent: AgentProc) -> None:
    mgmt = client(managed_agent, token=ROOT)
    pol = mgmt.acl.policy.create(name="kv-all", rules={"key_prefix": {"": {"policy": "write"}}})
    tok = mgmt.acl.token.create(policies_id=[pol["ID"]])
    assert http(managed_agent, "PUT", "/v1/kv/d", "1")[0] == 403
    status, _, _ = http(
        managed_agent, "PUT", "/v1/agent/token/default", {"Token": tok["SecretID"]}, token=ROOT
    )
    assert status == 200
    assert http(managed_agent, "PUT", "/v1/kv/d", "1")[0] == 200
    status, _, body = http(managed_agent, "PUT", "/v1/agent/token/nonsense", {"Token": "x"}, ROOT)
    assert (status, body) == (404, b'Token "nonsense" is unknown')


def test_service_rules_on_registration_and_deregistration(managed_agent: AgentProc) -> None:
    mgmt = client(managed_agent, token=ROOT)
    rules = {"service": {"web": {"policy": "write"}}, "node_prefix": {"": {"policy": "read"}}}
    pol = mgmt.acl.policy.create(name="web-owner", rules=rules)
    web = client(managed_agent, token=mgmt.acl.token.create(policies_id=[pol["ID"]])["SecretID"])
    assert web.agent.service.register("web", service_id="web1", address="10.0.0.7", port=80)
    with pytest.raises(consul.ACLPermissionDenied):
        web.agent.service.register("db", service_id="db1", address="10.0.0.8", port=5432)
    mgmt.agent.service.register("db", service_id="db1", address="10.0.0.8", port=5432)
    _, services = web.catalog.services()
    assert sorted(services) == ["web"]
    node = json.loads(http(managed_agent, "GET", "/v1/agent/self", token=ROOT)[2])["Config"][
        "NodeName"
    ]
    with pytest.raises(consul.ACLPermissionDenied):
        web.catalog.deregister(node, service_id="db1")
    with pytest.raises(consul.ACLPermissionDenied):
        web.catalog.deregister(node)  # the whole node needs node:write
    assert web.catalog.deregister(node, service_id="web1")
    _, services = mgmt.catalog.services()
    assert "web" not in services and "db" in services


def test_txn_and_sessions_follow_rules(managed_agent: AgentProc) -> None:
    mgmt = client(managed_agent, token=ROOT)
    rules = {"key_prefix": {"app/": {"policy": "write"}}}
    pol = mgmt.acl.policy.create(name="app-only", rules=rules)
    secret = mgmt.acl.token.create(policies_id=[pol["ID"]])["SecretID"]
    app = client(managed_agent, token=secret)

    def op(key: str) -> dict[str, Any]:
        return {"KV": {"Verb": "set", "Key": key, "Value": "MQ=="}}

    # (py-consul's txn.put sends no token: raw HTTP here.)
    status, _, body = http(managed_agent, "PUT", "/v1/txn", [op("app/a"), op("app/b")], secret)
    assert status == 200 and json.loads(body)["Errors"] is None
    status, _, body = http(
        managed_agent, "PUT", "/v1/txn", [op("app/c"), op("other/c")], token=secret
    )
    assert status == 403 and b"other/c" in body
    assert mgmt.kv.get("app/c")[1] is None  # nothing of the refused transaction ran

    # A recursive delete needs write on everything under the prefix.
    mgmt.kv.put("app/locked", "1")
    mgmt.kv.put("other/z", "1")
    with pytest.raises(consul.ACLPermissionDenied):
        app.kv.delete("", recurse=True)
    assert mgmt.kv.get("other/z")[1] is not None
    assert app.kv.delete("app/", recurse=True)

    # Sessions: creating one needs session write on the node; lists filter.
    with pytest.raises(consul.ACLPermissionDenied):
        app.session.create()
    sid = mgmt.session.create()
    assert [s["ID"] for s in mgmt.session.list()[1]] == [sid]
    status, headers, body = http(managed_agent, "GET", "/v1/session/list", token=secret)
    assert (status, json.loads(body)) == (200, [])
    assert headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
