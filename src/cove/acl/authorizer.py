"""What a token may do: its policies' rules merged and judged (no I/O).

Judging a name under a resource, as Consul does:

- an exact rule for the name wins; otherwise the longest prefix rule whose
  segment starts the name; rules for the same segment merge, deny winning
  (then write, list, read);
- ``write`` grants read and list, ``list`` grants read (keys only);
- when no rule matches, the agent's default policy decides; the ``acl``
  resource is never granted by default, only by a rule or management.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cove.acl.rules import JUDGED, RANK, Access, Rules
from cove.errors import PermissionDenied

_MEMO_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class _Table:
    exact: dict[str, Access]
    prefixes: tuple[tuple[str, Access], ...]  # longest first

    def level(self, name: str) -> Access | None:
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        for segment, access in self.prefixes:
            if name.startswith(segment):
                return access
        return None

    def under(self, prefix: str) -> Iterable[Access]:
        """Levels of every rule whose segment lies under ``prefix``."""
        for segment, access in self.exact.items():
            if segment.startswith(prefix):
                yield access
        for segment, access in self.prefixes:
            if segment.startswith(prefix) and segment != prefix:
                yield access


def _grants(level: Access, need: Access) -> bool:
    if level is Access.WRITE:
        return True
    if level is Access.LIST:
        return need in (Access.LIST, Access.READ)
    if level is Access.READ:
        return need is Access.READ
    return False


def _stronger(a: Access | None, b: Access) -> Access:
    return b if a is None or RANK[b] > RANK[a] else a


class Authorizer:
    """The compiled rights of one token. ``enabled`` is False for the
    stand-in used when ACLs are off (everything allowed, nothing filtered)."""

    __slots__ = (
        "_default",
        "_memo",
        "_reads_all",
        "_scalars",
        "_tables",
        "accessor",
        "enabled",
        "expires",
        "management",
    )

    def __init__(
        self,
        policies: Iterable[Rules] = (),
        *,
        default_allow: bool,
        management: bool = False,
        accessor: str = "",
        enabled: bool = True,
        expires: float | None = None,
    ) -> None:
        self.accessor = accessor
        self.expires = expires  # epoch seconds after which the token is gone
        self.management = management
        self.enabled = enabled
        self._default = default_allow
        exact: dict[str, dict[str, Access]] = {r: {} for r in JUDGED}
        prefix: dict[str, dict[str, Access]] = {r: {} for r in JUDGED}
        scalars: dict[str, Access] = {}
        for rules in policies:
            for rule in rules.rules:
                table = prefix[rule.resource] if rule.prefix else exact[rule.resource]
                table[rule.segment] = _stronger(table.get(rule.segment), rule.access)
            for name, access in rules.scalars:
                scalars[name] = _stronger(scalars.get(name), access)
        self._tables = {
            r: _Table(
                exact[r],
                tuple(sorted(prefix[r].items(), key=lambda item: len(item[0]), reverse=True)),
            )
            for r in JUDGED
        }
        self._reads_all = {r: self._covers_reads(self._tables[r]) for r in JUDGED}
        # Decisions never change for a compiled token: a list of a thousand
        # instances on a few nodes asks the same few questions.
        self._memo: dict[tuple[str, str, Access], bool] = {}
        if "mesh" not in scalars and "operator" in scalars:
            scalars["mesh"] = scalars["operator"]  # Consul: mesh follows operator when unset
        self._scalars = scalars

    def _covers_reads(self, table: _Table) -> bool:
        levels = [*table.exact.values(), *(a for _, a in table.prefixes)]
        if not all(_grants(level, Access.READ) for level in levels):
            return False
        return self._default or any(segment == "" for segment, _ in table.prefixes)

    def reads_all(self, *resources: str) -> bool:
        """True when every name of these resources may be read, so a list
        of them needs no filtering."""
        return self.management or all(self._reads_all[r] for r in resources)

    def allowed(self, resource: str, name: str, need: Access) -> bool:
        if self.management:
            return True
        key = (resource, name, need)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        level = self._tables[resource].level(name)
        result = self._default if level is None else _grants(level, need)
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[key] = result
        return result

    def scalar(self, resource: str, need: Access) -> bool:
        if self.management:
            return True
        level = self._scalars.get(resource)
        if level is None:
            return self._default and resource != "acl"
        return _grants(level, need)

    def write_prefix(self, resource: str, prefix: str) -> bool:
        """Write on ``prefix`` and on everything under it (a recursive
        delete): no rule below may grant less than write."""
        if self.management:
            return True
        table = self._tables[resource]
        if any(level is not Access.WRITE for level in table.under(prefix)):
            return False
        return self.allowed(resource, prefix, Access.WRITE)

    # -- short forms for the routes ---------------------------------------

    def need(self, resource: str, name: str, need: Access) -> None:
        """Raise ``PermissionDenied`` (Consul's wording) unless allowed."""
        if not self.allowed(resource, name, need):
            raise self.denied(f"{resource}:{need.value}", name)

    def need_scalar(self, resource: str, need: Access) -> None:
        if not self.scalar(resource, need):
            raise self.denied(f"{resource}:{need.value}")

    def need_write_prefix(self, resource: str, prefix: str) -> None:
        if not self.write_prefix(resource, prefix):
            raise self.denied(f"{resource}:write", prefix)

    def denied(self, permission: str, name: str | None = None) -> PermissionDenied:
        who = f"token with AccessorID '{self.accessor}'" if self.accessor else "anonymous token"
        on = f' on "{name}"' if name is not None else ""
        return PermissionDenied(f"Permission denied: {who} lacks permission '{permission}'{on}")


ALLOW_ALL = Authorizer(default_allow=True, management=True, enabled=False)
"""What every request acts as when ACLs are off."""
