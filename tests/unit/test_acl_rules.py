"""Consul's rule language and the authorizer's judgements (pure, no I/O)."""

from __future__ import annotations

import pytest

from cove.acl import Access, Authorizer, parse
from cove.errors import InvalidArgument, PermissionDenied


def authz(*texts: str, default: str = "deny") -> Authorizer:
    return Authorizer([parse(t) for t in texts], default_allow=default == "allow", accessor="a-1")


def test_hcl_and_json_forms_mean_the_same() -> None:
    hcl = """
key_prefix "app/" { policy = "write" }
service "web" {
  policy = "read"
}
operator = "read"
"""
    json = (
        '{"key_prefix": {"app/": {"policy": "write"}}, "service": {"web": {"policy": "read"}},'
        ' "operator": "read"}'
    )
    assert parse(hcl) == parse(json)
    a = authz(json)
    assert a.allowed("key", "app/x", Access.WRITE)
    assert a.allowed("service", "web", Access.READ)
    assert not a.allowed("service", "web", Access.WRITE)
    assert a.scalar("operator", Access.READ) and not a.scalar("operator", Access.WRITE)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('key_prefix "a/" { policy = "writ" }', "'writ'"),
        ('service "web" { policy = "list" }', "'list'"),
        ('kee "a" { policy = "read" }', "unknown resource 'kee'"),
        ('key "a" { polcy = "read" }', "unknown attribute(s) ['polcy']"),
        ('key "a" { }', "has no policy"),
        ('operator = "list"', "'list'"),
        ('key_prefix "a/" { policy = ', "Failed to parse ACL rules"),
        ('key = "read"', "needs a name and a block"),
    ],
)
def test_malformed_rules_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse(text)
    assert problem in err.value.message


def test_empty_rules_grant_nothing_under_deny() -> None:
    a = authz("")
    assert not a.allowed("key", "x", Access.READ)
    assert not a.scalar("operator", Access.READ)


def test_longest_prefix_wins_and_exact_beats_prefix() -> None:
    a = authz(
        'key_prefix "" { policy = "read" }',
        'key_prefix "app/" { policy = "write" }',
        'key_prefix "app/secret/" { policy = "deny" }',
        'key "app/secret/open" { policy = "read" }',
    )
    assert a.allowed("key", "other", Access.READ) and not a.allowed("key", "other", Access.WRITE)
    assert a.allowed("key", "app/x", Access.WRITE)
    assert not a.allowed("key", "app/secret/x", Access.READ)
    assert a.allowed("key", "app/secret/open", Access.READ)
    assert not a.allowed("key", "app/secret/open", Access.WRITE)


def test_deny_wins_among_equal_segments_across_policies() -> None:
    a = authz('service "web" { policy = "write" }', 'service "web" { policy = "deny" }')
    assert not a.allowed("service", "web", Access.READ)
    b = authz('service "web" { policy = "read" }', 'service "web" { policy = "write" }')
    assert b.allowed("service", "web", Access.WRITE)


def test_default_policy_applies_where_no_rule_matches() -> None:
    allow = authz('key_prefix "private/" { policy = "deny" }', default="allow")
    assert allow.allowed("key", "public", Access.WRITE)
    assert not allow.allowed("key", "private/x", Access.READ)
    assert allow.scalar("operator", Access.WRITE)
    # ACL management is never a default: only a rule or management grants it.
    assert not allow.scalar("acl", Access.READ)


def test_list_grants_read_but_not_write() -> None:
    a = authz('key_prefix "cfg/" { policy = "list" }')
    assert a.allowed("key", "cfg/a", Access.LIST) and a.allowed("key", "cfg/a", Access.READ)
    assert not a.allowed("key", "cfg/a", Access.WRITE)


def test_recursive_write_needs_write_on_everything_below() -> None:
    a = authz('key_prefix "app/" { policy = "write" }', 'key "app/keep" { policy = "read" }')
    assert not a.write_prefix("key", "app/")
    assert a.write_prefix("key", "app/sub/")
    assert not a.write_prefix("key", "")  # "" is not covered by app/ under deny
    assert authz('key_prefix "" { policy = "write" }').write_prefix("key", "")


def test_mesh_follows_operator_when_unset() -> None:
    assert authz('operator = "write"').scalar("mesh", Access.WRITE)
    assert not authz('operator = "write"\nmesh = "read"').scalar("mesh", Access.WRITE)


def test_denial_speaks_consuls_words() -> None:
    with pytest.raises(PermissionDenied) as err:
        authz('key_prefix "app/" { policy = "read" }').need("key", "app/x", Access.WRITE)
    assert err.value.message == (
        "Permission denied: token with AccessorID 'a-1' lacks permission 'key:write' on \"app/x\""
    )
    assert err.value.http_status == 403


def test_management_may_do_anything() -> None:
    a = Authorizer(default_allow=False, management=True)
    assert a.scalar("acl", Access.WRITE) and a.write_prefix("key", "")


def test_reads_all_only_when_no_name_is_hidden() -> None:
    assert authz('service_prefix "" { policy = "read" }').reads_all("service")
    assert not authz('service_prefix "" { policy = "read" }').reads_all("service", "node")
    assert not authz(
        'service_prefix "" { policy = "read" }', 'service "secret" { policy = "deny" }'
    ).reads_all("service")
    assert not authz('service "web" { policy = "read" }').reads_all("service")  # deny default
    assert authz('service "web" { policy = "write" }', default="allow").reads_all("service")
    assert not authz('service "db" { policy = "deny" }', default="allow").reads_all("service")


def test_oversized_rules_are_refused_before_parsing() -> None:
    with pytest.raises(InvalidArgument, match="ACL rules too large"):
        parse('key "a" { policy = "read" }\n' * 5000)
