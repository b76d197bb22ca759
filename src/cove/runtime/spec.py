"""Containers as the store holds them (``containers/<name>``), and the parsing
and validation of what a user asks for in ``cove run``. Pure: no I/O."""

from __future__ import annotations

import ipaddress
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cove.errors import InvalidArgument
from cove.model import Network, ServiceSpec
from cove.network.spec import check_label, check_name
from cove.runtime import resources
from cove.runtime.mounts import Kind, Mount, parse_all
from cove.runtime.security import check_security_opts, normalize_cap, resolve_caps
from cove.runtime.state import RestartPolicy, parse_restart, restart_text

PORTS = "ports/"  # ports/<proto>/<host port>: which container published it
DEFAULT_NETWORK = "bridge"  # as Docker's: a container without --network is on it
NETWORK_NONE = "none"  # loopback only
NETWORK_HOST = "host"
HOST_GATEWAY = "host-gateway"  # --add-host NAME:host-gateway


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
        if not 0 <= host_port <= 65535:  # 0: a free port, chosen at run
            raise InvalidArgument(f"invalid port spec {text!r}: port {host_port} is out of range")
        for p in (port,):
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
    restart_max: int = 0  # on-failure:N; 0: no limit
    init: bool = False  # --init: a tiny init (tini) runs the command
    stop_signal: str = "SIGTERM"
    extra_hosts: tuple[str, ...] = ()  # --add-host NAME:IP (or NAME:host-gateway)
    user: str = ""  # -u USER[:GROUP], else the image's USER; empty: root
    auto_remove: bool = False  # --rm: removed once it exits
    image: str = ""  # as the user named it
    image_id: str = ""  # sha256:..., "" for a container without an image
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False
    dns: tuple[str, ...] = ()  # --dns IP: the servers of /etc/resolv.conf
    dns_search: tuple[str, ...] = ()  # --dns-search DOMAIN ("." for none)
    dns_options: tuple[str, ...] = ()  # --dns-option OPT (e.g. ndots:2)
    memory: int = 0  # -m/--memory in bytes; 0: no limit
    cpus: float = 0.0  # --cpus; 0: no limit
    # "host": --network host, in the host's (the agent's) network namespace
    # with no endpoint of its own; "": its own namespace, on ``networks``
    network_mode: str = ""
    tty: bool = False  # -t: a terminal of its own (runtime.stdio)
    interactive: bool = False  # -i: stdin kept open for an attacher
    console_size: tuple[int, int] = (0, 0)  # -t: rows, columns at start (the caller's)

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
            "restart": restart_text(self.restart, self.restart_max),
            "ports": [str(p) for p in self.ports],
            "networks": list(self.networks),
            "services": list(self.services),
            "desired": self.desired.value,
            "created": self.created,
            "cap_add": list(self.cap_add),
            "cap_drop": list(self.cap_drop),
            "seccomp": "default" if self.seccomp else "unconfined",
            "node": self.node,
            "init": self.init,
            "stop_signal": self.stop_signal,
            "extra_hosts": list(self.extra_hosts),
            "user": self.user,
            "auto_remove": self.auto_remove,
            "image": self.image,
            "image_id": self.image_id,
            "mounts": [m.to_json() for m in self.mounts],
            "read_only": self.read_only,
            "dns": list(self.dns),
            "dns_search": list(self.dns_search),
            "dns_options": list(self.dns_options),
            "memory": self.memory,
            "cpus": self.cpus,
            "network_mode": self.network_mode,
            **self._stdio_json(),
        }

    def _stdio_json(self) -> dict[str, Any]:
        """-t and -i, only when given: other containers' records stay as
        they were."""
        if not (self.tty or self.interactive):
            return {}
        return {
            "tty": self.tty,
            "interactive": self.interactive,
            "console_size": list(self.console_size),
        }

    @property
    def host_network(self) -> bool:
        return self.network_mode == NETWORK_HOST

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Container:
        restart, restart_max = parse_restart(data.get("restart") or "no")
        return cls(
            id=data["id"],
            name=data["name"],
            argv=tuple(data["argv"]),
            hostname=data.get("hostname") or data["name"],
            env=dict(data.get("env") or {}),
            labels=dict(data.get("labels") or {}),
            rootfs=data.get("rootfs") or None,
            workdir=data.get("workdir") or "/",
            restart=restart,
            restart_max=restart_max,
            ports=tuple(PortMapping.parse(p) for p in data.get("ports") or ()),
            networks=tuple(data.get("networks") or ()),
            services=tuple(data.get("services") or ()),
            desired=Desired(data.get("desired", "running")),
            created=float(data.get("created", 0.0)),
            cap_add=tuple(data.get("cap_add") or ()),
            cap_drop=tuple(data.get("cap_drop") or ()),
            seccomp=data.get("seccomp", "default") != "unconfined",
            node=str(data.get("node") or ""),
            init=bool(data.get("init", False)),
            stop_signal=str(data.get("stop_signal") or "SIGTERM"),
            extra_hosts=tuple(data.get("extra_hosts") or ()),
            user=str(data.get("user") or ""),
            auto_remove=bool(data.get("auto_remove", False)),
            image=str(data.get("image") or ""),
            image_id=str(data.get("image_id") or ""),
            mounts=tuple(Mount.from_json(m) for m in data.get("mounts") or ()),
            read_only=bool(data.get("read_only")),
            dns=tuple(data.get("dns") or ()),
            dns_search=tuple(data.get("dns_search") or ()),
            dns_options=tuple(data.get("dns_options") or ()),
            memory=int(data.get("memory") or 0),
            cpus=float(data.get("cpus") or 0.0),
            network_mode=str(data.get("network_mode") or ""),
            tty=bool(data.get("tty")),
            interactive=bool(data.get("interactive")),
            console_size=_console_size(data.get("console_size")),
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
    restart_max: int = 0
    # No --network given: on the default network (created on first use).
    default_network: bool = False
    init: bool = False
    stop_signal: str = "SIGTERM"
    expose: tuple[str, ...] = ()  # PORT/PROTO, published on free host ports by -P
    extra_hosts: tuple[str, ...] = ()
    user: str = ""
    auto_remove: bool = False
    image: str = ""
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False
    entrypoint: str = ""  # --entrypoint with an image: replaces its ENTRYPOINT and CMD
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    memory: int = 0
    cpus: float = 0.0
    host_network: bool = False  # --network host
    # -v host directories made if missing (Docker's), unlike --mount's
    made_if_missing: tuple[str, ...] = ()
    tty: bool = False
    interactive: bool = False
    console_size: tuple[int, int] = (0, 0)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpec:
        if not isinstance(data, Mapping):
            raise InvalidArgument("request body must be a JSON object")
        argv = _strings(data, "command")
        image = _string(data, "image")
        if image and _string(data, "rootfs"):
            raise InvalidArgument("give an image or --rootfs, not both")
        entrypoint = _string(data, "entrypoint")
        if entrypoint and not image:
            # --entrypoint: the program; the command's words are its arguments
            argv = [entrypoint, *argv]
        if not argv and not image:
            raise InvalidArgument("a command to run is required (cove run ... -- CMD ARGS)")
        name = _string(data, "name")
        if name:
            check_name(name, "container")
        hostname = _string(data, "hostname")
        if hostname:
            check_label(hostname.lower(), "host")
        networks = _strings(data, "networks")
        if len(set(networks)) != len(networks):
            raise InvalidArgument("a network is given twice")
        default_network = not networks
        if default_network:
            networks = [DEFAULT_NETWORK]
        elif NETWORK_NONE in networks:
            if len(networks) > 1:
                raise InvalidArgument("--network none cannot go with other networks")
            networks = []
        host_network = NETWORK_HOST in networks
        if host_network:
            _check_host_network(data, networks)
            networks = []
        ip = _address(data, "ip", 4)
        ip6 = _address(data, "ip6", 6)
        if (ip or ip6) and len(networks) != 1:
            raise InvalidArgument("--ip and --ip6 need exactly one --network")
        aliases = tuple(check_label(a.lower(), "alias") for a in _strings(data, "aliases"))
        attachments = tuple(
            Attachment(
                network=n,
                ipv4=ip if i == 0 else None,  # type: ignore[arg-type]
                ipv6=ip6 if i == 0 else None,  # type: ignore[arg-type]
                aliases=aliases,
            )
            for i, n in enumerate(networks)
        )
        restart_arg = _string(data, "restart") or "no"
        auto_remove = _bool(data, "auto_remove")
        if auto_remove and restart_arg != "no":
            raise InvalidArgument("--rm and --restart cannot go together: choose one")
        try:
            restart, restart_max = parse_restart(restart_arg)
        except ValueError:
            raise InvalidArgument(
                f"invalid restart policy {restart_arg!r}: use no, on-failure[:N], always"
                " or unless-stopped"
            ) from None
        wanted = [p for text in _strings(data, "ports") for p in expand_ports(text)]
        expose = tuple(parse_expose(e) for e in _strings(data, "expose"))
        if host_network:
            # As Docker: published ports are discarded (the container's
            # ports are the host's already); the CLI warns.
            wanted = []
        elif _bool(data, "publish_all"):
            # -P: every exposed port not published already, on a free host port
            done = {(p.partition("/")[0].rpartition(":")[2], p.partition("/")[2] or "tcp")
                    for p in wanted}  # fmt: skip
            for e in expose:
                port, _, proto = e.partition("/")
                if (port, proto) not in done:
                    wanted.append(f"0:{port}/{proto}")
        ports = tuple(PortMapping.parse(p) for p in wanted)
        seen: set[str] = set()
        for p in ports:
            if p.host_port == 0:
                continue  # a free host port is chosen at run
            if p.claim_key in seen:
                raise InvalidArgument(f"host port {p.host_port}/{p.proto} is published twice")
            seen.add(p.claim_key)
        if ports and not networks:
            raise InvalidArgument("publishing a port (-p) needs a network, not --network none")
        services = tuple(_service(s) for s in _strings(data, "services"))
        rootfs = _string(data, "rootfs") or None
        workdir = _string(data, "workdir") or ("" if image else "/")  # "": the image's
        if workdir and not workdir.startswith("/"):
            raise InvalidArgument(f"working directory {workdir!r} must be absolute")
        # Stored as named (normalized), so inspect shows what the user asked.
        cap_add = tuple(dict.fromkeys(normalize_cap(c) for c in _strings(data, "cap_add")))
        cap_drop = tuple(dict.fromkeys(normalize_cap(c) for c in _strings(data, "cap_drop")))
        seccomp = check_security_opts(_strings(data, "security_opt"))
        volumes = _strings(data, "volumes")
        mounts = parse_all(volumes, _strings(data, "mount"), _strings(data, "tmpfs"))
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
            restart_max=restart_max,
            default_network=default_network,
            expose=expose,
            extra_hosts=tuple(parse_add_host(h) for h in _strings(data, "add_hosts")),
            dns=tuple(parse_dns(d) for d in _strings(data, "dns")),
            dns_search=tuple(parse_dns_search(d) for d in _strings(data, "dns_search")),
            dns_options=tuple(parse_dns_option(o) for o in _strings(data, "dns_options")),
            memory=resources.parse_memory(_string(data, "memory")) if data.get("memory") else 0,
            cpus=resources.parse_cpus(_string(data, "cpus")) if data.get("cpus") else 0.0,
            user=_user(_string(data, "user")),
            auto_remove=auto_remove,
            init=_bool(data, "init"),
            stop_signal=parse_signal(_string(data, "stop_signal") or "SIGTERM"),
            ports=ports,
            services=services,
            cap_add=cap_add,
            cap_drop=cap_drop,
            seccomp=seccomp,
            image=image,
            entrypoint=entrypoint if image else "",
            mounts=mounts,
            made_if_missing=tuple(m.source for m in mounts[: len(volumes)] if m.kind is Kind.BIND),
            read_only=bool(data.get("read_only")),
            host_network=host_network,
            tty=_bool(data, "tty"),
            interactive=_bool(data, "interactive"),
            console_size=_console_size(data.get("console_size")),
        )


def _check_host_network(data: Mapping[str, Any], networks: Sequence[str]) -> None:
    """``InvalidArgument`` for what cannot go with ``--network host``: the
    container has no interface, address or DNS name of its own."""
    if len(networks) > 1:
        raise InvalidArgument("--network host cannot go with other networks")
    for key, flag in (("ip", "--ip"), ("ip6", "--ip6"), ("aliases", "--alias"),
                      ("services", "--service")):  # fmt: skip
        if data.get(key):
            raise InvalidArgument(
                f"{flag} cannot go with --network host: the container has no address of"
                " its own (use a cove network)"
            )


def _console_size(value: Any) -> tuple[int, int]:
    """``[rows, columns]`` of a -t container's terminal at start; (0, 0):
    none given (the first attacher sets it)."""
    if value is None:
        return (0, 0)
    ok = isinstance(value, list | tuple) and len(value) == 2
    if not ok or not all(isinstance(n, int) and 0 <= n <= 0xFFFF for n in value):
        raise InvalidArgument("'console_size' must be [rows, columns], each 0 to 65535")
    return (int(value[0]), int(value[1]))


def expand_ports(text: str) -> list[str]:
    """``-p`` with ranges, one mapping each: ``8000-8002:9000-9002`` is three,
    ``8000-8002:80`` is refused (ranges of one length); a container port
    alone (``80``, ``80-81``) gets free host ports (host port 0 until run)."""
    body, slash, proto = text.partition("/")
    head, colon, container = body.rpartition(":")
    if not colon:
        head, container = "0", body
    if head.endswith("]"):
        host_ip, host = head, "0"
    else:
        host_ip, _, host = head.rpartition(":")
    host = host or "0"
    prefix = f"{host_ip}:" if host_ip else ""
    if "-" not in container and "-" not in host:
        return [f"{prefix}{host}:{container}{slash}{proto}"]
    c_lo, c_hi = _range(container, text)
    h_lo, h_hi = _range(host, text) if host != "0" else (0, 0)
    if host != "0" and h_hi - h_lo != c_hi - c_lo:
        raise InvalidArgument(
            f"invalid port spec {text!r}: the host range and the container range differ in length"
        )
    if c_hi - c_lo >= 1024:
        raise InvalidArgument(f"invalid port spec {text!r}: at most 1024 ports in a range")
    return [
        f"{prefix}{h_lo + i if host != '0' else 0}:{c_lo + i}{slash}{proto}"
        for i in range(c_hi - c_lo + 1)
    ]


def _range(text: str, spec: str) -> tuple[int, int]:
    lo, dash, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi if dash else lo)
    except ValueError:
        raise InvalidArgument(f"invalid port spec {spec!r}: {_PORT_USAGE}", port=spec) from None
    if not 1 <= a <= b <= 65535:
        raise InvalidArgument(f"invalid port spec {spec!r}: bad range {text}", port=spec)
    return a, b


def _user(text: str) -> str:
    user, sep, group = text.partition(":")
    bad = any(c.isspace() or c in "/\0" for c in text)
    if bad or (text and not user) or (sep and not group) or group.count(":"):
        raise InvalidArgument(f"invalid user {text!r}: expected USER[:GROUP], names or numbers")
    return text


def parse_add_host(text: str) -> str:
    """``--add-host NAME:IP`` (Docker's ``NAME=IP`` too; IP may be IPv6, or
    ``host-gateway``: the gateway of the container's first network) as
    ``NAME:IP``."""
    sep = "=" if "=" in text else ":"
    name, _, address = text.partition(sep)
    address = address.strip("[]")
    ok_name = bool(name) and not any(c.isspace() or c in "#:" for c in name)
    if ok_name and address == HOST_GATEWAY:
        return f"{name}:{address}"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ok_name = False
    if not ok_name:
        raise InvalidArgument(
            f"invalid --add-host {text!r}: expected NAME:IP (or NAME:{HOST_GATEWAY})"
        )
    return f"{name}:{ip}"


def parse_dns(text: str) -> str:
    """``--dns IP``: an IPv4 or IPv6 address, as resolv.conf takes it."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise InvalidArgument(
            f"invalid --dns {text!r}: expected the IP address of a DNS server"
        ) from None


_DOMAIN = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+$")


def parse_dns_search(text: str) -> str:
    """``--dns-search DOMAIN`` (``.``: no search domains)."""
    if text == "." or (len(text) <= 253 and _DOMAIN.match(text) and ".." not in text):
        return text
    raise InvalidArgument(
        f"invalid --dns-search {text!r}: expected a domain name (or '.' for none)"
    )


def parse_dns_option(text: str) -> str:
    """``--dns-option OPT``: one resolv.conf option word (``ndots:2``, ``edns0``)."""
    if text and text.isprintable() and not any(c.isspace() or c in "#;" for c in text):
        return text
    raise InvalidArgument(
        f"invalid --dns-option {text!r}: expected one resolv.conf option such as ndots:2"
    )


def parse_expose(text: str) -> str:
    """``--expose PORT[/tcp|/udp]`` as ``PORT/PROTO``."""
    port, _, proto = text.partition("/")
    proto = proto or "tcp"
    if not port.isdigit() or not 1 <= int(port) <= 65535 or proto not in ("tcp", "udp"):
        raise InvalidArgument(f"invalid --expose {text!r}: expected PORT[/tcp|/udp]")
    return f"{int(port)}/{proto}"


def parse_signal(text: str) -> str:
    """A signal as Docker's ``--stop-signal`` takes it (``SIGINT``, ``INT``,
    ``2``), as its name (``SIGINT``). ``InvalidArgument`` otherwise."""
    name = text.strip().upper()
    try:
        sig = (
            signal.Signals(int(name))
            if name.isdigit()
            else signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        )
    except (KeyError, ValueError):
        raise InvalidArgument(
            f"invalid stop signal {text!r}: use a name (SIGTERM, SIGINT, QUIT) or a number"
        ) from None
    if sig in (signal.SIGKILL, signal.SIGSTOP) and name not in ("SIGKILL", "KILL", "9"):
        raise InvalidArgument(f"invalid stop signal {text!r}")
    return sig.name


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"'{key}' must be true or false")
    return value


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
