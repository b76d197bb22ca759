"""Containers as the store holds them (``containers/<name>``), and the parsing
and validation of what a user asks for in ``cove run``. Pure: no I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cove.errors import InvalidArgument
from cove.model import Network, ServiceSpec
from cove.network.spec import check_name
from cove.runtime.mounts import Mount, parse_all
from cove.runtime.security import check_security_opts, normalize_cap, resolve_caps
from cove.runtime.state import RestartPolicy

PORTS = "ports/"  # ports/<proto>/<host port>: which container published it


class Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Desired(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


_PORT_USAGE = "expected [HOSTIP:]HOSTPORT:PORT[/tcp|/udp], an IPv6 HOSTIP in brackets"


@dataclass(frozen=True, slots=True)
class PortMapping:
    """``-p``: a host port, on every host address of both families or on
    one ``host_ip``, forwarded to a container port. An unspecified
    ``host_ip`` (``0.0.0.0``, ``[::]``) means every address of its family."""

    host_port: int
    port: int
    proto: Proto = Proto.TCP
    host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    def __str__(self) -> str:
        if self.host_ip is None:
            host = ""
        elif self.host_ip.version == 6:
            host = f"[{self.host_ip}]:"
        else:
            host = f"{self.host_ip}:"
        return f"{host}{self.host_port}:{self.port}/{self.proto}"

    @property
    def claim_key(self) -> str:
        """One claim per protocol and host port, whatever the host IP and
        family: a port published on IPv4 is taken on IPv6 too."""
        return f"{PORTS}{self.proto}/{self.host_port}"

    def publishes_on(self, version: int) -> bool:
        """Whether this mapping listens on IPv``version`` host addresses."""
        return self.host_ip is None or self.host_ip.version == version

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        """``[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]``; an IPv6 HOSTIP is written in
        brackets (``[2001:db8::1]:8080:80``). Raises ``InvalidArgument``."""
        body, _, proto = text.partition("/")
        host_ip, ports = _split_host(text, body)
        parts = ports.split(":")
        try:
            protocol = Proto(proto or "tcp")
            if len(parts) != 2:
                raise ValueError(text)
            host_port, port = int(parts[0]), int(parts[1])
        except ValueError:
            raise InvalidArgument(f"invalid port spec {text!r}: {_PORT_USAGE}", port=text) from None
        for p in (host_port, port):
            if not 1 <= p <= 65535:
                raise InvalidArgument(f"invalid port spec {text!r}: port {p} is out of range")
        return cls(host_port=host_port, port=port, proto=protocol, host_ip=host_ip)


def _split_host(
    text: str, body: str
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, str]:
    """The host IP of a port spec (if any) and the ``HOSTPORT:PORT`` rest."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"invalid port spec {text!r}: {why}", port=text)

    if body.startswith("["):
        inside, sep, rest = body[1:].partition("]")
        if not sep:
            raise bad("missing ']' after the IPv6 host IP")
        if not rest.startswith(":"):
            raise bad("expected ':HOSTPORT:PORT' after ']'")
        try:
            v6 = ipaddress.IPv6Address(inside)
        except ValueError:
            raise bad(f"{inside!r} in brackets is not an IPv6 address") from None
        if v6.scope_id or v6.ipv4_mapped is not None:
            raise bad(f"{inside} cannot be published: use a global or unique local address")
        if v6.is_loopback:
            # The kernel has no route_localnet for IPv6: ::1 cannot be DNATed.
            raise bad("the IPv6 loopback address ::1 cannot be published")
        return v6, rest[1:]
    parts = body.split(":")
    if len(parts) <= 2:
        return None, body
    if len(parts) > 3 or "]" in body:
        raise bad(_PORT_USAGE)
    try:
        return ipaddress.IPv4Address(parts[0]), ":".join(parts[1:])
    except ValueError:
        raise bad(f"{parts[0]!r} is not an IPv4 address ({_PORT_USAGE})") from None


def check_port_families(ports: Sequence[PortMapping], network: Network) -> None:
    """``InvalidArgument`` when a mapping's host IP is of a family the
    container gets no address in on ``network``, the one its published
    ports go to (its first)."""
    for p in ports:
        if p.host_ip is None:
            continue
        if p.host_ip.version == 6 and network.ipv6 is None:
            raise InvalidArgument(
                f"cannot publish {p}: the container has no IPv6 address on network "
                f"{network.name} (create the network with --ipv6)",
                port=str(p),
            )
        if p.host_ip.version == 4 and network.ipv4 is None:
            raise InvalidArgument(
                f"cannot publish {p}: the container has no IPv4 address on network {network.name}",
                port=str(p),
            )


@dataclass(frozen=True, slots=True)
class Attachment:
    """One network a container asks for, with its optional fixed addresses."""

    network: str
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str
    argv: tuple[str, ...]
    hostname: str
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    rootfs: str | None = None
    workdir: str = "/"
    restart: RestartPolicy = RestartPolicy.NO
    ports: tuple[PortMapping, ...] = ()
    networks: tuple[str, ...] = ()  # in attach order; the first holds the default route
    services: tuple[str, ...] = ()
    desired: Desired = Desired.RUNNING
    created: float = 0.0
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    seccomp: bool = True
    node: str = ""  # the node whose agent runs it; empty: a single-host record
    image: str = ""  # as the user named it
    image_id: str = ""  # sha256:..., "" for a container without an image
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False
    user: str = ""  # the image's USER

    @property
    def capabilities(self) -> frozenset[str]:
        return resolve_caps(self.cap_add, self.cap_drop)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "argv": list(self.argv),
            "hostname": self.hostname,
            "env": dict(self.env),
            "labels": dict(self.labels),
            "rootfs": self.rootfs,
            "workdir": self.workdir,
            "restart": self.restart.value,
            "ports": [str(p) for p in self.ports],
            "networks": list(self.networks),
            "services": list(self.services),
            "desired": self.desired.value,
            "created": self.created,
            "cap_add": list(self.cap_add),
            "cap_drop": list(self.cap_drop),
            "seccomp": "default" if self.seccomp else "unconfined",
            "node": self.node,
            "image": self.image,
            "image_id": self.image_id,
            "mounts": [m.to_json() for m in self.mounts],
            "read_only": self.read_only,
            "user": self.user,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Container:
        return cls(
            id=data["id"],
            name=data["name"],
            argv=tuple(data["argv"]),
            hostname=data.get("hostname") or data["name"],
            env=dict(data.get("env") or {}),
            labels=dict(data.get("labels") or {}),
            rootfs=data.get("rootfs") or None,
            workdir=data.get("workdir") or "/",
            restart=RestartPolicy(data.get("restart", "no")),
            ports=tuple(PortMapping.parse(p) for p in data.get("ports") or ()),
            networks=tuple(data.get("networks") or ()),
            services=tuple(data.get("services") or ()),
            desired=Desired(data.get("desired", "running")),
            created=float(data.get("created", 0.0)),
            cap_add=tuple(data.get("cap_add") or ()),
            cap_drop=tuple(data.get("cap_drop") or ()),
            seccomp=data.get("seccomp", "default") != "unconfined",
            node=str(data.get("node") or ""),
            image=str(data.get("image") or ""),
            image_id=str(data.get("image_id") or ""),
            mounts=tuple(Mount.from_json(m) for m in data.get("mounts") or ()),
            read_only=bool(data.get("read_only")),
            user=str(data.get("user") or ""),
        )


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A validated ``cove run`` request."""

    argv: tuple[str, ...]
    name: str = ""
    attachments: tuple[Attachment, ...] = ()
    hostname: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    rootfs: str | None = None
    workdir: str = "/"
    restart: RestartPolicy = RestartPolicy.NO
    ports: tuple[PortMapping, ...] = ()
    services: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    seccomp: bool = True
    image: str = ""
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpec:
        if not isinstance(data, Mapping):
            raise InvalidArgument("request body must be a JSON object")
        argv = _strings(data, "command")
        image = _string(data, "image")
        if image and _string(data, "rootfs"):
            raise InvalidArgument("give an image or --rootfs, not both")
        if not argv and not image:
            raise InvalidArgument("a command to run is required (cove run ... -- CMD ARGS)")
        name = _string(data, "name")
        if name:
            check_name(name, "container")
        hostname = _string(data, "hostname")
        if hostname:
            check_name(hostname, "host")
        networks = _strings(data, "networks")
        if len(set(networks)) != len(networks):
            raise InvalidArgument("a network is given twice")
        ip = _address(data, "ip", 4)
        ip6 = _address(data, "ip6", 6)
        if (ip or ip6) and len(networks) != 1:
            raise InvalidArgument("--ip and --ip6 need exactly one --network")
        aliases = tuple(check_name(a, "alias") for a in _strings(data, "aliases"))
        attachments = tuple(
            Attachment(
                network=n,
                ipv4=ip if i == 0 else None,  # type: ignore[arg-type]
                ipv6=ip6 if i == 0 else None,  # type: ignore[arg-type]
                aliases=aliases,
            )
            for i, n in enumerate(networks)
        )
        restart_text = _string(data, "restart") or "no"
        try:
            restart = RestartPolicy(restart_text)
        except ValueError:
            raise InvalidArgument(
                f"invalid restart policy {restart_text!r}: use no, on-failure or always"
            ) from None
        ports = tuple(PortMapping.parse(p) for p in _strings(data, "ports"))
        seen: set[str] = set()
        for p in ports:
            if p.claim_key in seen:
                raise InvalidArgument(f"host port {p.host_port}/{p.proto} is published twice")
            seen.add(p.claim_key)
        if ports and not networks:
            raise InvalidArgument("publishing a port (-p) needs a --network")
        services = tuple(_service(s) for s in _strings(data, "services"))
        rootfs = _string(data, "rootfs") or None
        workdir = _string(data, "workdir") or ("" if image else "/")  # "": the image's
        if workdir and not workdir.startswith("/"):
            raise InvalidArgument(f"working directory {workdir!r} must be absolute")
        # Stored as named (normalized), so inspect shows what the user asked.
        cap_add = tuple(dict.fromkeys(normalize_cap(c) for c in _strings(data, "cap_add")))
        cap_drop = tuple(dict.fromkeys(normalize_cap(c) for c in _strings(data, "cap_drop")))
        seccomp = check_security_opts(_strings(data, "security_opt"))
        return cls(
            argv=tuple(argv),
            name=name,
            attachments=attachments,
            hostname=hostname,
            env=parse_pairs(_strings(data, "env"), "environment variable", allow_bare=False),
            labels=parse_pairs(_strings(data, "labels"), "label", allow_bare=True),
            rootfs=rootfs,
            workdir=workdir,
            restart=restart,
            ports=ports,
            services=services,
            cap_add=cap_add,
            cap_drop=cap_drop,
            seccomp=seccomp,
            image=image,
            mounts=parse_all(
                _strings(data, "volumes"), _strings(data, "mount"), _strings(data, "tmpfs")
            ),
            read_only=bool(data.get("read_only")),
        )


def parse_pairs(items: Sequence[str], what: str, *, allow_bare: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or (not sep and not allow_bare) or "\0" in item:
            raise InvalidArgument(f"invalid {what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _service(text: str) -> str:
    if ServiceSpec.parse(text) is None:
        raise InvalidArgument(f"invalid service {text!r}: expected NAME:PORT[:TAG,...]")
    return text


def _string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key) or ""
    if not isinstance(value, str):
        raise InvalidArgument(f"'{key}' must be a string")
    return value


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"'{key}' must be a list of strings")
    return list(value)


def _address(data: Mapping[str, Any], key: str, version: int) -> ipaddress._BaseAddress | None:
    text = _string(data, key)
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid --{key} {text!r}: not an IP address") from None
    if addr.version != version:
        raise InvalidArgument(f"--{key} {text} is not an IPv{version} address")
    return addr
