"""Consul's ACL rule language, parsed into plain values (no I/O).

A policy's ``Rules`` is HCL (version 1, as Consul writes it) or its JSON
form::

    key_prefix "app/" { policy = "write" }
    service "web" { policy = "read" }
    operator = "read"

Resources that name something (``key``, ``service``, ``node``, ...) come as
an exact rule and a ``_prefix`` rule; the scalar resources (``operator``,
``acl``, ``keyring``, ``mesh``) take a bare level. Anything else, an unknown
level or a level a resource does not take, is ``InvalidArgument`` naming it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import hcl  # pyhcl: HCL version 1, the dialect Consul's policies use

from cove.errors import InvalidArgument


class Access(StrEnum):
    DENY = "deny"
    READ = "read"
    LIST = "list"
    WRITE = "write"


# When several rules name the same thing, the strongest one holds: deny
# beats everything, then write, list and read (Consul's merge order).
RANK = {Access.READ: 0, Access.LIST: 1, Access.WRITE: 2, Access.DENY: 3}

MAX_RULES = 64 * 1024  # far above real policies; parsing is not free

SEGMENTED = ("key", "service", "node", "session", "agent", "event", "query")
SCALARS = ("operator", "acl", "keyring", "mesh", "peering")
# The ``intentions`` attribute of a service block grants ``intention``
# (read/write on intentions whose destination is that service). Unset, it
# is read when the service policy is read or write, else deny (Consul's
# acl/policy.go).
_SERVICE_EXTRAS = frozenset({"intentions"})
JUDGED = (*SEGMENTED, "intention")
"""Resources the authorizer judges by name."""


@dataclass(frozen=True, slots=True)
class Rule:
    resource: str  # one of SEGMENTED
    segment: str
    prefix: bool
    access: Access


@dataclass(frozen=True, slots=True)
class Rules:
    """One policy's rules."""

    rules: tuple[Rule, ...] = ()
    scalars: tuple[tuple[str, Access], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules or self.scalars)


def parse(text: str) -> Rules:
    """Parse a policy's rules (HCL or JSON). Raises ``InvalidArgument``
    naming the first problem."""
    if not text.strip():
        return Rules()
    if len(text) > MAX_RULES:
        raise InvalidArgument(f"ACL rules too large: {len(text)} bytes, at most {MAX_RULES}")
    try:
        tree = hcl.loads(text)
    except Exception as exc:  # pyhcl raises ValueError and its lexer's own errors
        raise InvalidArgument(f"Failed to parse ACL rules: {exc}") from exc
    if not isinstance(tree, dict):
        raise InvalidArgument("Failed to parse ACL rules: expected a set of rules")
    rules: list[Rule] = []
    scalars: list[tuple[str, Access]] = []
    for name, body in tree.items():
        if name in SCALARS:
            scalars.append((name, _level(body, name, allow_list=False)))
            continue
        resource, prefix = _resource(name)
        for segment, block in _blocks(body, name):
            level = _block_level(block, name, segment, resource)
            rules.append(Rule(resource, segment, prefix, level))
            if resource == "service":
                rules.append(Rule("intention", segment, prefix, _intentions(block, level)))
    return Rules(tuple(rules), tuple(scalars))


def _resource(name: str) -> tuple[str, bool]:
    base = name.removesuffix("_prefix")
    if base not in SEGMENTED:
        known = ", ".join([*SEGMENTED, *(f"{s}_prefix" for s in SEGMENTED), *SCALARS])
        raise InvalidArgument(f"Invalid ACL rule: unknown resource {name!r} (known: {known})")
    return base, name != base


def _blocks(body: Any, name: str) -> Iterator[tuple[str, Any]]:
    # HCL gives {segment: {...}}; JSON may also give a list of such maps.
    parts = body if isinstance(body, list) else [body]
    for part in parts:
        if not isinstance(part, Mapping):
            raise InvalidArgument(
                f'Invalid ACL rule: {name} needs a name and a block, as {name} "x" '
                '{ policy = "read" }'
            )
        yield from part.items()


def _block_level(block: Any, name: str, segment: str, resource: str) -> Access:
    where = f'{name} "{segment}"'
    if not isinstance(block, Mapping):
        raise InvalidArgument(f"Invalid ACL rule: {where} needs a block with a policy")
    extras = set(block) - {"policy"}
    if resource == "service":
        extras -= _SERVICE_EXTRAS
    if extras:
        raise InvalidArgument(
            f"Invalid ACL rule: {where} has unknown attribute(s) {sorted(extras)}"
        )
    if "policy" not in block:
        raise InvalidArgument(f"Invalid ACL rule: {where} has no policy")
    return _level(block["policy"], where, allow_list=resource == "key")


def _intentions(block: Mapping[str, Any], policy: Access) -> Access:
    if "intentions" in block:
        return _level(block["intentions"], "intentions", allow_list=False)
    return Access.READ if policy in (Access.READ, Access.WRITE) else Access.DENY


def _level(value: Any, where: str, *, allow_list: bool) -> Access:
    try:
        level = Access(value) if isinstance(value, str) else None
    except ValueError:
        level = None
    if level is None or (level is Access.LIST and not allow_list):
        allowed = "read, write, list or deny" if allow_list else "read, write or deny"
        raise InvalidArgument(f"Invalid ACL rule: {where} policy {value!r} (expected {allowed})")
    return level
