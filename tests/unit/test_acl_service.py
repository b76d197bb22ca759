"""The ACL service over a store: bootstrap, hashed secrets, resolution and
its cache, bad input that changes nothing, and the native-API gate."""

from __future__ import annotations

import time

import pytest

from cove.acl import Access, AclService
from cove.acl.model import ANONYMOUS_ID
from cove.clock import ManualClock
from cove.errors import InvalidArgument, PermissionDenied
from cove.store.hub import WatchHub
from cove.store.memory import MemoryStore

ROOT = "7d5b1e4a-0c8f-4b8e-9a51-2f1c3e9d6b70"


@pytest.fixture
def acl() -> AclService:
    clock = ManualClock()
    service = AclService(
        MemoryStore(clock),
        clock,
        enabled=True,
        default_policy="deny",
        initial_management=ROOT,
        node_name="n1",
    )
    service.setup()
    return service


def _dump(acl: AclService) -> bytes:
    return b"".join(kv.key.encode() + kv.value for kv in acl.store.range("").kvs)


def test_initial_management_closes_bootstrap_and_is_stored_hashed(acl: AclService) -> None:
    assert acl.resolve(ROOT).scalar("acl", Access.WRITE)
    with pytest.raises(PermissionDenied, match="ACL bootstrap no longer allowed"):
        acl.objects.bootstrap()
    assert ROOT.encode() not in _dump(acl)


def test_bootstrap_works_once() -> None:
    clock = ManualClock()
    acl = AclService(MemoryStore(clock), clock, enabled=True, default_policy="deny")
    acl.setup()
    first = acl.objects.bootstrap()
    assert acl.resolve(first["SecretID"]).management
    with pytest.raises(PermissionDenied, match="no longer allowed"):
        acl.objects.bootstrap()
    assert first["SecretID"].encode() not in _dump(acl)
    # Reads show the secret only to its holder.
    assert acl.objects.token_read(first["AccessorID"])["SecretID"] == "<hidden>"
    assert acl.objects.token_self(first["SecretID"])["SecretID"] == first["SecretID"]


def test_unknown_and_expired_tokens_are_not_found(acl: AclService) -> None:
    with pytest.raises(PermissionDenied, match="ACL not found"):
        acl.resolve("no-such-secret")
    tok = acl.objects.token_create({"ExpirationTTL": "2m"})
    acl.resolve(tok["SecretID"])
    acl.clock.advance(121)  # type: ignore[attr-defined]
    with pytest.raises(PermissionDenied, match="ACL not found"):
        acl.resolve(tok["SecretID"])


def test_no_token_is_the_anonymous_token(acl: AclService) -> None:
    anon = acl.resolve("")
    assert anon.accessor == ANONYMOUS_ID
    assert not anon.allowed("key", "x", Access.READ)


def test_policy_change_reaches_a_cached_token(acl: AclService) -> None:
    pol = acl.objects.policy_create({"Name": "p", "Rules": 'key_prefix "a/" { policy = "read" }'})
    tok = acl.objects.token_create({"Policies": [{"Name": "p"}]})
    assert not acl.resolve(tok["SecretID"]).allowed("key", "a/x", Access.WRITE)
    acl.objects.policy_update(
        pol["ID"], {"Name": "p", "Rules": 'key_prefix "a/" { policy = "write" }'}
    )
    assert acl.resolve(tok["SecretID"]).allowed("key", "a/x", Access.WRITE)


def test_roles_carry_their_policies(acl: AclService) -> None:
    acl.objects.policy_create({"Name": "svc", "Rules": 'service_prefix "" { policy = "write" }'})
    acl.objects.role_create({"Name": "ops", "Policies": [{"Name": "svc"}]})
    tok = acl.objects.token_create({"Roles": [{"Name": "ops"}]})
    assert acl.resolve(tok["SecretID"]).allowed("service", "web", Access.WRITE)
    assert acl.objects.role_read_name("ops")["Policies"][0]["Name"] == "svc"


@pytest.mark.parametrize(
    "body",
    [
        {"Name": "bad", "Rules": 'key "a" { policy = "maybe" }'},
        {"Name": "bad name!", "Rules": ""},
        {"Name": "bad", "Rules": "key {"},
    ],
)
def test_bad_policy_changes_nothing(acl: AclService, body: dict[str, str]) -> None:
    before = acl.store.revision
    with pytest.raises(InvalidArgument):
        acl.objects.policy_create(body)
    assert acl.store.revision == before
    assert [p["Name"] for p in acl.objects.policies()] == ["global-management"]


def test_duplicate_policy_name_is_refused(acl: AclService) -> None:
    acl.objects.policy_create({"Name": "p"})
    with pytest.raises(InvalidArgument, match="already exists"):
        acl.objects.policy_create({"Name": "p"})


def test_token_linking_unknown_policy_is_refused(acl: AclService) -> None:
    with pytest.raises(InvalidArgument, match='No such ACL policy with name "nope"'):
        acl.objects.token_create({"Policies": [{"Name": "nope"}]})


def test_builtins_cannot_be_removed(acl: AclService) -> None:
    with pytest.raises(InvalidArgument):
        acl.objects.token_delete(ANONYMOUS_ID, caller="x")
    with pytest.raises(InvalidArgument):
        acl.objects.policy_delete("00000000-0000-0000-0000-000000000001")


def test_native_api_gate(acl: AclService) -> None:
    acl.objects.policy_create({"Name": "opr", "Rules": 'operator = "read"'})
    reader = acl.objects.token_create({"Policies": [{"Name": "opr"}]})["SecretID"]
    assert acl.allows_operator(ROOT, write=True)
    assert acl.allows_operator(reader, write=False)
    assert not acl.allows_operator(reader, write=True)
    assert not acl.allows_operator("bogus", write=False)
    assert not acl.allows_operator(None, write=False)
    clock = ManualClock()
    off = AclService(MemoryStore(clock), clock, enabled=False)
    assert not off.allows_operator(ROOT, write=False)


def test_agent_default_token_serves_requests_without_one(acl: AclService) -> None:
    acl.objects.policy_create({"Name": "dns", "Rules": 'service_prefix "" { policy = "read" }'})
    tok = acl.objects.token_create({"Policies": [{"Name": "dns"}]})
    assert not acl.dns_authorizer().allowed("service", "web", Access.READ)
    acl.set_agent_token("default", tok["SecretID"])
    assert acl.resolve("").allowed("service", "web", Access.READ)
    assert acl.dns_authorizer().allowed("service", "web", Access.READ)
    assert tok["SecretID"].encode() not in _dump(acl)


def test_resolution_racing_a_change_is_not_kept(
    acl: AclService, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = 'key_prefix "a/" { policy = "read" }'
    pol = acl.objects.policy_create({"Name": "p", "Rules": read})
    secret = acl.objects.token_create({"Policies": [{"Name": "p"}]})["SecretID"]
    original = acl.objects.policy
    raced: list[bool] = []

    def racing(pid: str) -> object:
        policy = original(pid)
        if not raced:  # the policy changes right after it was read
            raced.append(True)
            acl.objects.policy_update(
                pol["ID"], {"Name": "p", "Rules": 'key_prefix "a/" { policy = "write" }'}
            )
        return policy

    monkeypatch.setattr(acl.objects, "policy", racing)
    assert not acl.resolve(secret).allowed("key", "a/x", Access.WRITE)  # read before the change
    assert acl.resolve(secret).allowed("key", "a/x", Access.WRITE)  # not served from the cache


def test_native_api_methods_map_to_operator_read_and_write(acl: AclService) -> None:
    acl.objects.policy_create({"Name": "opr", "Rules": 'operator = "read"'})
    reader = acl.objects.token_create({"Policies": [{"Name": "opr"}]})["SecretID"]
    assert acl.allows_native(reader, "GET") and acl.allows_native(reader, "head")
    assert not acl.allows_native(reader, "POST") and not acl.allows_native(reader, "DELETE")
    assert acl.allows_native(ROOT, "DELETE")


def test_a_token_read_and_sent_back_updates(acl: AclService) -> None:
    acl.objects.policy_create({"Name": "p"})
    made = acl.objects.token_create({"Description": "d", "ExpirationTTL": "1h"})
    read = acl.objects.token_read(made["AccessorID"])
    assert read["SecretID"] == "<hidden>"
    updated = acl.objects.token_update(
        made["AccessorID"], {**read, "Description": "e", "Policies": [{"Name": "p"}]}
    )
    assert updated["Description"] == "e" and updated["Policies"][0]["Name"] == "p"
    assert acl.resolve(made["SecretID"]).accessor == made["AccessorID"]
    with pytest.raises(InvalidArgument, match="SecretID"):
        acl.objects.token_update(made["AccessorID"], {"SecretID": ROOT})


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"ExpirationTTL": "30s"}, "at least 1 minute"),
        ({"ExpirationTTL": "25h"}, "at most 24 hours"),
        ({"ExpirationTTL": "soon"}, "ExpirationTTL"),
        ({"ExpirationTime": "yesterday"}, "not RFC 3339"),
        ({"ExpirationTime": "1970-01-01T00:00:00Z"}, "in the past"),
        ({"ExpirationTTL": "1h", "ExpirationTime": "2100-01-01T00:00:00Z"}, "cannot both"),
        ({"SecretID": "not-a-uuid"}, "not a UUID"),
        ({"Policies": "global-management"}, "must be a list"),
    ],
)
def test_bad_token_bodies_are_400_and_change_nothing(
    acl: AclService, body: dict[str, str], problem: str
) -> None:
    before = acl.store.revision
    with pytest.raises(InvalidArgument, match=problem):
        acl.objects.token_create(body)
    assert acl.store.revision == before


def test_identities_and_templated_policies_grant_what_consul_derives(acl: AclService) -> None:
    tok = acl.objects.token_create(
        {
            "ServiceIdentities": [{"ServiceName": "web"}],
            "TemplatedPolicies": [
                {"TemplateName": "builtin/node", "TemplateVariables": {"Name": "n2"}},
                {"TemplateName": "builtin/service", "TemplateVariables": {"Name": "api"}},
                {"TemplateName": "builtin/service", "TemplateVariables": {"Name": "far"},
                 "Datacenters": ["dc9"]},
            ],
        }
    )  # fmt: skip
    a = acl.resolve(tok["SecretID"])
    assert a.allowed("service", "web", Access.WRITE) and a.allowed("service", "api", Access.WRITE)
    assert a.allowed("service", "db", Access.READ) and not a.allowed("service", "db", Access.WRITE)
    assert a.allowed("node", "n2", Access.WRITE) and not a.allowed("node", "n1", Access.WRITE)
    assert not a.allowed("service", "far", Access.WRITE)  # meant for another datacenter
    shown = acl.objects.token_read(tok["AccessorID"])
    assert shown["ServiceIdentities"] == [{"ServiceName": "web", "Datacenters": []}]
    assert shown["TemplatedPolicies"][0]["TemplateVariables"] == {"Name": "n2"}
    with pytest.raises(InvalidArgument, match="unknown templated policy 'builtin/x'"):
        acl.objects.token_create({"TemplatedPolicies": [{"TemplateName": "builtin/x"}]})


def test_another_agents_change_reaches_this_agents_cache() -> None:
    """Two agents on one store (as on etcd): the store's events under
    acl/ drop the other agent's resolved tokens."""
    clock = ManualClock()
    store = MemoryStore(clock)
    a = AclService(store, clock, enabled=True, default_policy="deny", node_name="a")
    b = AclService(store, clock, enabled=True, default_policy="deny", node_name="b")
    a.setup()
    b.setup()
    hub = WatchHub(store, poll=0.05)
    hub.subscribe("acl/", b.on_events)
    hub.start()
    try:
        pol = a.objects.policy_create({"Name": "p", "Rules": 'key "k" { policy = "read" }'})
        secret = a.objects.token_create({"Policies": [{"Name": "p"}]})["SecretID"]
        assert not b.resolve(secret).allowed("key", "k", Access.WRITE)
        a.objects.policy_update(pol["ID"], {"Name": "p", "Rules": 'key "k" { policy = "write" }'})
        deadline = time.monotonic() + 5
        while not b.resolve(secret).allowed("key", "k", Access.WRITE):
            assert time.monotonic() < deadline, "agent b kept a stale token"
            time.sleep(0.02)
    finally:
        hub.stop()
