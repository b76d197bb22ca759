"""ACL objects (tokens, policies, roles), their store keys and their
decoding from Consul's request bodies.

Store keys, all under ``acl/``:

- ``acl/meta/salt``                 random salt for secret hashes
- ``acl/bootstrap``                 present once bootstrap has happened
- ``acl/tokens/<accessor>``         Token (the secret only as a hash)
- ``acl/secrets/<hash>``            accessor of the token with that secret
- ``acl/policies/<id>``, ``acl/policy-names/<name>`` -> id
- ``acl/roles/<id>``, ``acl/role-names/<name>`` -> id
- ``acl/agent-tokens/<node>/<kind>`` hash of the agent's token of that kind
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cove.errors import InvalidArgument

ROOT = "acl/"
SALT = "acl/meta/salt"
BOOTSTRAP = "acl/bootstrap"
TOKENS = "acl/tokens/"
SECRETS = "acl/secrets/"
POLICIES = "acl/policies/"
POLICY_NAMES = "acl/policy-names/"
ROLES = "acl/roles/"
ROLE_NAMES = "acl/role-names/"
AGENT_TOKENS = "acl/agent-tokens/"

ANONYMOUS_ID = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"
MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
MANAGEMENT_NAME = "global-management"
HIDDEN = "<hidden>"

AGENT_TOKEN_KINDS = (
    "default",
    "agent",
    "agent_recovery",
    "replication",
    "config_file_service_registration",
    "dns",
)
_LEGACY_KINDS = {"agent_master": "agent_recovery", "acl_token": "default"}

_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_ROLE_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,256}$")
_IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True, slots=True)
class Identity:
    """A service or node identity: a templated policy Consul derives."""

    name: str
    datacenters: tuple[str, ...] = ()


# Consul's templated policies: name -> whether it takes a Name variable.
TEMPLATES = {"builtin/service": True, "builtin/node": True, "builtin/dns": False}


@dataclass(frozen=True, slots=True)
class Template:
    """A templated policy (``builtin/service`` with Name ``web``, ...)."""

    name: str
    variable: str = ""
    datacenters: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "TemplateName": self.name,
            "TemplateVariables": {"Name": self.variable} if self.variable else None,
            "Datacenters": list(self.datacenters) or None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Template:
        variables = d.get("TemplateVariables") or {}
        return cls(
            str(d.get("TemplateName", "")),
            str(variables.get("Name", "")),
            tuple(d.get("Datacenters") or ()),
        )


@dataclass(frozen=True, slots=True)
class Token:
    accessor_id: str
    secret_hash: str
    description: str = ""
    policies: tuple[str, ...] = ()  # policy IDs
    roles: tuple[str, ...] = ()  # role IDs
    service_identities: tuple[Identity, ...] = ()
    node_identities: tuple[Identity, ...] = ()
    templated: tuple[Template, ...] = ()
    local: bool = False
    create_time: str = ""
    expiration_time: float | None = None  # epoch seconds

    def to_store(self) -> dict[str, Any]:
        return {
            "AccessorID": self.accessor_id,
            "SecretHash": self.secret_hash,
            "Description": self.description,
            "Policies": list(self.policies),
            "Roles": list(self.roles),
            "ServiceIdentities": [_identity_json(i) for i in self.service_identities],
            "NodeIdentities": [_identity_json(i) for i in self.node_identities],
            "TemplatedPolicies": [tp.to_json() for tp in self.templated],
            "Local": self.local,
            "CreateTime": self.create_time,
            "ExpirationTime": self.expiration_time,
        }

    @classmethod
    def from_store(cls, d: Mapping[str, Any]) -> Token:
        return cls(
            accessor_id=d["AccessorID"],
            secret_hash=d["SecretHash"],
            description=d.get("Description", ""),
            policies=tuple(d.get("Policies") or ()),
            roles=tuple(d.get("Roles") or ()),
            service_identities=tuple(_identity(i) for i in d.get("ServiceIdentities") or ()),
            node_identities=tuple(_identity(i) for i in d.get("NodeIdentities") or ()),
            templated=tuple(Template.from_json(x) for x in d.get("TemplatedPolicies") or ()),
            local=bool(d.get("Local", False)),
            create_time=d.get("CreateTime", ""),
            expiration_time=d.get("ExpirationTime"),
        )


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: tuple[str, ...] = ()

    def to_store(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Description": self.description,
            "Rules": self.rules,
            "Datacenters": list(self.datacenters),
        }

    @classmethod
    def from_store(cls, d: Mapping[str, Any]) -> Policy:
        return cls(
            id=d["ID"],
            name=d["Name"],
            description=d.get("Description", ""),
            rules=d.get("Rules", ""),
            datacenters=tuple(d.get("Datacenters") or ()),
        )


@dataclass(frozen=True, slots=True)
class Role:
    id: str
    name: str
    description: str = ""
    policies: tuple[str, ...] = ()
    service_identities: tuple[Identity, ...] = ()
    node_identities: tuple[Identity, ...] = ()
    templated: tuple[Template, ...] = ()

    def to_store(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Description": self.description,
            "Policies": list(self.policies),
            "ServiceIdentities": [_identity_json(i) for i in self.service_identities],
            "NodeIdentities": [_identity_json(i) for i in self.node_identities],
            "TemplatedPolicies": [tp.to_json() for tp in self.templated],
        }

    @classmethod
    def from_store(cls, d: Mapping[str, Any]) -> Role:
        return cls(
            id=d["ID"],
            name=d["Name"],
            description=d.get("Description", ""),
            policies=tuple(d.get("Policies") or ()),
            service_identities=tuple(_identity(i) for i in d.get("ServiceIdentities") or ()),
            node_identities=tuple(_identity(i) for i in d.get("NodeIdentities") or ()),
            templated=tuple(Template.from_json(x) for x in d.get("TemplatedPolicies") or ()),
        )


MANAGEMENT_POLICY = Policy(
    MANAGEMENT_ID,
    MANAGEMENT_NAME,
    "Builtin Policy that grants unlimited access",
    'acl = "write"\noperator = "write"\nkeyring = "write"\nmesh = "write"\n'
    + "".join(
        f'{r}_prefix "" {{ policy = "write" }}\n'
        for r in ("agent", "event", "key", "node", "query", "service", "session")
    ),
)


def seg(name: str) -> str:
    """One key path segment, percent-escaped so a name cannot forge a key."""
    return name.replace("%", "%25").replace("/", "%2F")


def _identity_json(i: Identity) -> dict[str, Any]:
    return {"Name": i.name, "Datacenters": list(i.datacenters)}


def _identity(d: Mapping[str, Any]) -> Identity:
    return Identity(str(d.get("Name", "")), tuple(d.get("Datacenters") or ()))


# -- request bodies -----------------------------------------------------------


# Consul decodes request bodies as Go does: field names match whatever
# their case ("name" is Name), which clients such as py-consul rely on.
_FIELDS = {
    k.lower(): k
    for k in (
        "AccessorID", "SecretID", "Description", "Policies", "Roles", "ServiceIdentities",
        "NodeIdentities", "Local", "ExpirationTime", "ExpirationTTL", "ID", "Name", "Rules",
        "Datacenters", "Datacenter", "ServiceName", "NodeName", "BootstrapSecret", "Token",
        "TemplatedPolicies", "TemplateName", "TemplateVariables",
    )
}  # fmt: skip


def canonical(d: Mapping[str, Any]) -> dict[str, Any]:
    return {_FIELDS.get(str(k).lower(), k): v for k, v in d.items()}


def body_map(body: Any, what: str) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidArgument(f"{what} decode failed: expected a JSON object")
    return canonical(body)


def text(d: Mapping[str, Any], key: str, what: str) -> str:
    value = d.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} decode failed: {key} must be a string")
    return value


def check_policy_name(name: str) -> None:
    if not _POLICY_NAME.match(name):
        raise InvalidArgument(
            f"Invalid Policy: invalid Name {name!r}: use 1 to 128 letters, digits, - and _"
        )


def check_role_name(name: str) -> None:
    if not _ROLE_NAME.match(name):
        raise InvalidArgument(
            f"Invalid Role: invalid Name {name!r}: use 1 to 256 letters, digits, - and _"
        )


def check_uuid(value: str, what: str) -> None:
    if not _UUID.match(value):
        raise InvalidArgument(f"Invalid {what}: {value!r} is not a UUID")


def links(d: Mapping[str, Any], key: str, what: str) -> list[tuple[str, str]]:
    """``[{"ID": ...} | {"Name": ...}]`` as (id, name) pairs."""
    raw = d.get(key) or []
    if not isinstance(raw, list):
        raise InvalidArgument(f"{what} decode failed: {key} must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidArgument(f"{what} decode failed: {key} entries must be objects")
        item = canonical(item)
        ident = text(item, "ID", what)
        name = text(item, "Name", what)
        if not ident and not name:
            raise InvalidArgument(f"{what}: a link in {key} needs an ID or a Name")
        out.append((ident, name))
    return out


def identities(d: Mapping[str, Any], key: str, name_key: str, what: str) -> tuple[Identity, ...]:
    raw = d.get(key) or []
    if not isinstance(raw, list):
        raise InvalidArgument(f"{what} decode failed: {key} must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidArgument(f"{what} decode failed: {key} entries must be objects")
        item = canonical(item)
        name = text(item, name_key, what)
        if not _IDENTITY_NAME.match(name):
            raise InvalidArgument(f"{what}: invalid {name_key} {name!r} in {key}")
        dcs = item.get("Datacenters") or []
        if isinstance(item.get("Datacenter"), str) and item["Datacenter"]:
            dcs = [item["Datacenter"]]  # a node identity names one datacenter
        if not isinstance(dcs, list) or not all(isinstance(x, str) for x in dcs):
            raise InvalidArgument(f"{what} decode failed: Datacenters must be a list of strings")
        out.append(Identity(name, tuple(dcs)))
    return tuple(out)


def templates(d: Mapping[str, Any], what: str) -> tuple[Template, ...]:
    raw = d.get("TemplatedPolicies") or []
    if not isinstance(raw, list):
        raise InvalidArgument(f"{what} decode failed: TemplatedPolicies must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidArgument(
                f"{what} decode failed: TemplatedPolicies entries must be objects"
            )
        item = canonical(item)
        name = text(item, "TemplateName", what)
        if name not in TEMPLATES:
            known = ", ".join(TEMPLATES)
            raise InvalidArgument(f"{what}: unknown templated policy {name!r} (known: {known})")
        variables = item.get("TemplateVariables") or {}
        if not isinstance(variables, dict):
            raise InvalidArgument(f"{what} decode failed: TemplateVariables must be an object")
        variable = text(canonical(variables), "Name", what)
        if TEMPLATES[name] and not _IDENTITY_NAME.match(variable):
            raise InvalidArgument(f"{what}: {name} needs a valid TemplateVariables Name")
        dcs = item.get("Datacenters") or []
        if not isinstance(dcs, list) or not all(isinstance(x, str) for x in dcs):
            raise InvalidArgument(f"{what} decode failed: Datacenters must be a list of strings")
        out.append(Template(name, variable if TEMPLATES[name] else "", tuple(dcs)))
    return tuple(out)


def agent_token_kind(kind: str) -> str | None:
    kind = _LEGACY_KINDS.get(kind, kind)
    return kind if kind in AGENT_TOKEN_KINDS else None
