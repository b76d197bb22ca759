"""Network policy values: selectors, port specs, allow rules.

Store keys (the ``policy/`` prefix is this package's):

- ``policy/rules/<id>``   Rule: traffic a default-deny network lets in

Default-deny itself is ``Network.default_deny`` (``networks/<name>``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cove.errors import InvalidArgument

POLICY = "policy/"
RULES = "policy/rules/"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,252}$")


class SelectorKind(StrEnum):
    ANY = "any"  # every container
    NAME = "name"  # a container name or, failing that, a service name
    CONTAINER = "container"
    SERVICE = "service"
    LABELS = "labels"  # every label must match


@dataclass(frozen=True, slots=True)
class Selector:
    kind: SelectorKind
    value: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        """``*``, ``NAME``, ``container:NAME``, ``service:NAME`` or
        ``KEY=VALUE[,KEY=VALUE...]``. Raises ``InvalidArgument``."""
        text = text.strip()
        if text in ("*", "any"):
            return cls(SelectorKind.ANY)
        if "=" in text:
            pairs: list[tuple[str, str]] = []
            for part in text.split(","):
                key, sep, value = part.partition("=")
                key, value = key.strip(), value.strip()
                if not sep or not _LABEL_KEY.match(key):
                    raise InvalidArgument(f"invalid label selector {text!r}: expected KEY=VALUE")
                pairs.append((key, value))
            return cls(SelectorKind.LABELS, labels=tuple(sorted(pairs)))
        prefix, sep, rest = text.partition(":")
        if sep:
            try:
                kind = SelectorKind(prefix.lower())
            except ValueError:
                kind = SelectorKind.ANY  # sentinel; refused below
            if kind not in (SelectorKind.CONTAINER, SelectorKind.SERVICE):
                raise InvalidArgument(
                    f"unknown selector kind {prefix!r} in {text!r}: "
                    "use NAME, container:NAME, service:NAME, KEY=VALUE or *"
                )
            text = rest
        else:
            kind = SelectorKind.NAME
        if not _NAME.match(text):
            raise InvalidArgument(f"invalid selector {text!r}")
        return cls(kind, value=text.lower())

    def __str__(self) -> str:
        if self.kind is SelectorKind.ANY:
            return "*"
        if self.kind is SelectorKind.LABELS:
            return ",".join(f"{k}={v}" for k, v in self.labels)
        if self.kind is SelectorKind.NAME:
            return self.value
        return f"{self.kind.value}:{self.value}"


class L4(StrEnum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class PortSpec:
    """``PORT[/PROTO]`` or ``FIRST-LAST[/PROTO]`` (tcp unless told)."""

    first: int
    last: int
    proto: L4 = L4.TCP

    @classmethod
    def parse(cls, text: str) -> PortSpec:
        ports, _, proto = text.strip().partition("/")
        first, dash, last = ports.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
            kind = L4(proto.lower() or "tcp")
        except ValueError as exc:
            raise InvalidArgument(
                f"invalid port {text!r}: expected PORT[/tcp|udp] or FIRST-LAST[/tcp|udp]"
            ) from exc
        if not 0 < lo <= hi < 65536:
            raise InvalidArgument(f"invalid port range {text!r}")
        return cls(lo, hi, kind)

    def matches(self, proto: L4, port: int) -> bool:
        return proto is self.proto and self.first <= port <= self.last

    def __str__(self) -> str:
        rng = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{rng}/{self.proto.value}"


@dataclass(frozen=True, slots=True)
class Rule:
    """Allow new connections on ``network`` from ``source`` to ``dest``
    (any port when ``ports`` is empty). ``source`` may be on any cove
    network; ``dest`` is resolved on ``network`` only."""

    id: str
    network: str
    source: Selector
    dest: Selector
    ports: tuple[PortSpec, ...] = ()
    created: float = 0.0
    description: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "network": self.network,
            "from": str(self.source),
            "to": str(self.dest),
            "ports": [str(p) for p in self.ports],
            "created": self.created,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rule:
        try:
            return cls(
                id=str(data["id"]),
                network=str(data["network"]),
                source=Selector.parse(str(data["from"])),
                dest=Selector.parse(str(data["to"])),
                ports=tuple(PortSpec.parse(str(p)) for p in data.get("ports") or ()),
                created=float(data.get("created") or 0.0),
                description=str(data.get("description") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed policy rule: {exc}") from exc
