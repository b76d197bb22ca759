"""Attachments: containers of another runtime (podman, containerd, CRI-O)
on cove networks, through ``cove-cni``.

An attachment is keyed by (container id, interface name) on one node. It
is stored twice, in one transaction: as its own record
(``cni/<node>/<container id>/<ifname>``, what DEL, CHECK and GC work from)
and as an ordinary ``Endpoint`` (``endpoints/<network>/<node>/<id>``), so DNS,
policy, VIPs and ``network inspect`` see it like any container's. Its
address comes from cove's IPAM, owned by ``cni:<node>/<cid>/<ifname>``;
its published ports are claimed in the same port table as ``cove run -p``.

The namespace is the runtime's (a path such as ``/run/netns/x``): cove
binds it under its own directory only for the few netlink requests of an
operation, through the same ``ContainerDatapath.attach`` that ``cove run``
and ``connect`` use, and never deletes it. The host side of the veth pair
is named ``cn`` + 10 hex digits, so the container reconciler (which owns
``cv`` veths) leaves it alone; it is guarded as cove's own containers' are
(``runtime.guard``: its frames must carry its MAC and addresses), from
before the veth exists until it is deleted.

Order, so that a crash at any point is cleaned up by DEL or GC: address
first, then both records, then the kernel. A failure undoes what was made
before the error is answered.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove.datapath.base import ContainerDatapath, Gateway, Interface
from cove.errors import (
    AlreadyExists,
    Conflict,
    CoveError,
    DatapathError,
    InvalidArgument,
    NotFound,
)
from cove.ipam.allocator import Ipam
from cove.model import (
    IPAM,
    NETWORKS,
    Endpoint,
    IPAddress,
    Network,
    ServiceSpec,
    endpoint_key,
    legacy_endpoint_key,
)
from cove.runtime import guard
from cove.runtime.ports import Published
from cove.runtime.spec import PortMapping, Proto
from cove.store.base import Compare, Delete, Put, Store

log = logging.getLogger(__name__)

CNI = "cni/"
_CID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,255}$")
_IFNAME = re.compile(r"^[^/:\s]{1,15}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
_POD = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,251}[a-z0-9])?$")
_ATTEMPTS = 16


def cni_key(node: str, cid: str, ifname: str) -> str:
    return f"{CNI}{node}/{cid}/{ifname}"


def owner(node: str, cid: str, ifname: str) -> str:
    """The IPAM owner of an attachment's addresses."""
    return f"cni:{node}/{cid}/{ifname}"


def cni_veth_name(endpoint_id: str) -> str:
    return "cn" + endpoint_id[:10]


@dataclass(frozen=True, slots=True)
class AttachRequest:
    """What ``cove-cni`` ADD sends, checked."""

    container_id: str
    ifname: str
    netns: str
    network: str
    ips: tuple[IPAddress, ...] = ()
    mac: str = ""
    pod_name: str = ""
    aliases: tuple[str, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    services: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> AttachRequest:
        if not isinstance(data, dict):
            raise InvalidArgument("the attach request must be a JSON object")
        cid, ifname, network = _ids(data)
        netns = data.get("netns")
        if not isinstance(netns, str) or not netns.startswith("/"):
            raise InvalidArgument("netns must be the absolute path of a network namespace")
        ips: list[IPAddress] = []
        for text in data.get("ips") or []:
            try:
                ip = ipaddress.ip_address(str(text).split("/", 1)[0])
            except ValueError as exc:
                raise InvalidArgument(f"requested address {text!r} is not an IP address") from exc
            if ip not in ips:
                ips.append(ip)
        if sum(1 for i in ips if i.version == 4) > 1 or sum(1 for i in ips if i.version == 6) > 1:
            raise InvalidArgument("at most one requested address per family", ips=ips)
        mac = str(data.get("mac") or "")
        if mac and not _MAC.match(mac):
            raise InvalidArgument(f"MAC {mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
        if mac and int(mac[:2], 16) & 1:
            raise InvalidArgument(f"MAC {mac} is a multicast address")
        pod = str(data.get("podName") or "")[:253]
        aliases = tuple(
            dict.fromkeys(a.lower() for a in data.get("aliases") or [] if isinstance(a, str))
        )
        ports = tuple(_port(m) for m in data.get("portMappings") or [])
        services: list[str] = []
        for text in data.get("services") or []:
            if ServiceSpec.parse(str(text)) is None:
                raise InvalidArgument(
                    f"service {text!r} is not NAME:PORT[:TAG,...]", service=str(text)
                )
            services.append(str(text))
        return cls(
            container_id=cid, ifname=ifname, netns=netns, network=network, ips=tuple(ips),
            mac=mac.lower(), pod_name=pod, aliases=tuple(a for a in aliases if _NAME.match(a)),
            ports=ports, services=tuple(services),
        )  # fmt: skip


def _ids(data: Mapping[str, Any]) -> tuple[str, str, str]:
    cid = data.get("containerID")
    if not isinstance(cid, str) or not _CID.match(cid):
        raise InvalidArgument(f"containerID {cid!r} is not a valid container id")
    ifname = data.get("ifname")
    if not isinstance(ifname, str) or not _IFNAME.match(ifname) or ifname in (".", ".."):
        raise InvalidArgument(f"ifname {ifname!r} is not a valid interface name")
    network = data.get("network")
    if not isinstance(network, str) or not network:
        raise InvalidArgument("network must name a cove network")
    return cid, ifname, network


def _port(m: Any) -> PortMapping:
    if not isinstance(m, dict):
        raise InvalidArgument("a port mapping must be an object")
    try:
        host_port = int(m["hostPort"])
        port = int(m["containerPort"])
        proto = Proto(str(m.get("protocol") or "tcp").lower())
        host_ip = m.get("hostIP") or ""
        ip = ipaddress.ip_address(host_ip) if host_ip else None
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"port mapping {m!r} is not valid: {exc}") from exc
    if not (0 < host_port < 65536 and 0 < port < 65536):
        raise InvalidArgument(f"port mapping {m!r}: ports must be 1-65535")
    if ip is not None and ip.is_unspecified:
        ip = None
    return PortMapping(host_port, port, proto, ip)


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment as the store keeps it."""

    node: str
    container_id: str
    ifname: str
    network: str
    netns: str
    endpoint_id: str
    host_veth: str
    mac: str
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    pod_name: str = ""
    ports: tuple[PortMapping, ...] = ()
    created: float = 0.0
    services: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return cni_key(self.node, self.container_id, self.ifname)

    @property
    def endpoint_key(self) -> str:
        return endpoint_key(self.network, self.node, self.endpoint_id)

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "container_id": self.container_id,
            "ifname": self.ifname,
            "network": self.network,
            "netns": self.netns,
            "endpoint_id": self.endpoint_id,
            "host_veth": self.host_veth,
            "mac": self.mac,
            "ipv4": str(self.ipv4) if self.ipv4 else None,
            "ipv6": str(self.ipv6) if self.ipv6 else None,
            "pod_name": self.pod_name,
            "ports": [str(p) for p in self.ports],
            "services": list(self.services),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attachment:
        v4, v6 = data.get("ipv4"), data.get("ipv6")
        return cls(
            node=data["node"], container_id=data["container_id"], ifname=data["ifname"],
            network=data["network"], netns=data.get("netns", ""),
            endpoint_id=data["endpoint_id"], host_veth=data["host_veth"], mac=data["mac"],
            ipv4=ipaddress.IPv4Address(v4) if v4 else None,
            ipv6=ipaddress.IPv6Address(v6) if v6 else None,
            pod_name=data.get("pod_name", ""),
            ports=tuple(PortMapping.parse(p) for p in data.get("ports") or ()),
            services=tuple(data.get("services") or ()),
            created=float(data.get("created", 0.0)),
        )  # fmt: skip


def guard_port(att: Attachment) -> guard.Port:
    """The anti-spoofing entries of ``att``'s host veth."""
    return guard.Port.of(att.host_veth, "cni:" + att.key, att.mac, att.addresses)


def _encode(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


class AttachmentService:
    """attach, detach, check, list, gc and status of this node's
    attachments. ``netns`` is a ``ContainerDatapath`` over a directory of
    cove's own (its namespace files are short-lived binds of the
    runtime's); ``ports_changed`` recompiles the published-port table;
    ``port_probe`` refuses a host port a host program holds; ``guard``
    puts an attachment's anti-spoofing entries in place (raising
    ``CoveError`` when it cannot) and ``unguard`` removes them."""

    def __init__(
        self,
        store: Store,
        ipam: Ipam,
        netns: ContainerDatapath,
        node: str,
        clock: Callable[[], float],
        ports_changed: Callable[[], None] = lambda: None,
        port_probe: Callable[[PortMapping], None] = lambda _m: None,
        datapath_problem: Callable[[], str | None] = lambda: None,
        retired: Callable[[], None] = lambda: None,
        guard: Callable[[Attachment], None] = lambda _a: None,
        unguard: Callable[[Attachment], None] = lambda _a: None,
    ) -> None:
        self._store = store
        self._ipam = ipam
        self._dp = netns
        self.node = node
        self._time = clock
        self._ports_changed = ports_changed
        self._probe = port_probe
        self._problem = datapath_problem
        self._retired = retired  # veths were retired: reap them soon
        self._guard = guard
        self._unguard = unguard
        # One operation at a time per (container, interface): the runtime
        # may run ADDs for different containers in parallel.
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- reading -------------------------------------------------------------

    def get(self, cid: str, ifname: str) -> Attachment | None:
        kv = self._store.get(cni_key(self.node, cid, ifname))
        return Attachment.from_json(json.loads(kv.value)) if kv is not None else None

    def list(self, network: str | None = None, node: str | None = None) -> list[Attachment]:
        """Attachments of ``node`` (this one by default; ``"*"`` all),
        optionally of one network."""
        prefix = CNI if node == "*" else f"{CNI}{node or self.node}/"
        out = []
        for kv in self._store.range(prefix).kvs:
            try:
                att = Attachment.from_json(json.loads(kv.value))
            except (ValueError, KeyError) as exc:
                log.warning("unreadable attachment %s: %s", kv.key, exc)
                continue
            if network is None or att.network == network:
                out.append(att)
        return out

    def _network(self, name: str) -> Network:
        kv = self._store.get(NETWORKS + name)
        if kv is None:
            raise InvalidArgument(
                f"network {name} not found: create it (cove network create {name}) "
                "or fix 'network' in the CNI configuration",
                network=name,
            )
        return Network.from_json(json.loads(kv.value))

    @contextlib.contextmanager
    def _locked(self, cid: str, ifname: str) -> Any:
        with self._locks_guard:
            lock = self._locks.setdefault((cid, ifname), threading.Lock())
        with lock:
            try:
                yield
            finally:
                with self._locks_guard:
                    self._locks.pop((cid, ifname), None)

    @contextlib.contextmanager
    def _bound(self, cid: str, ifname: str, netns: str) -> Any:
        """The runtime's namespace bound under cove's directory for the
        block; the bind (never the runtime's file) is removed after."""
        # One bind per operation: operations on other interfaces of the
        # same container may run meanwhile.
        ref = hashlib.sha256(f"{self.node}/{cid}/{ifname}".encode()).hexdigest()[:32]
        with contextlib.suppress(CoveError, OSError):
            self._dp.delete_netns(ref)  # a stale bind from a crash
        try:
            self._dp.create_netns(ref, existing=Path(netns))
        except DatapathError as exc:
            raise InvalidArgument(
                f"netns {netns} is not a network namespace: {exc.message}", netns=netns
            ) from exc
        try:
            yield ref
        finally:
            with contextlib.suppress(CoveError, OSError):
                self._dp.delete_netns(ref)

    # -- attach ----------------------------------------------------------------

    def attach(self, req: AttachRequest) -> tuple[Attachment, Network]:
        """Address, records, veth. Raises ``InvalidArgument`` (unknown
        network, bad netns, address outside the subnet), ``AlreadyExists``
        (the interface is attached already), ``Conflict`` (address or
        port taken), ``IpamExhausted``; nothing is left held then."""
        net = self._network(req.network)
        with self._locked(req.container_id, req.ifname):
            if self.get(req.container_id, req.ifname) is not None:
                raise AlreadyExists(
                    f"container {req.container_id[:12]} already has {req.ifname} attached; "
                    "DEL it first",
                    container=req.container_id,
                )
            for p in req.ports:
                self._check_port(p)
            who = owner(self.node, req.container_id, req.ifname)
            att: Attachment | None = None
            try:
                att = self._allocate(req, net, who)
                self._write(att, req)
                self._guard(att)  # before the veth: its first frame is checked
                self._plug(att, net)
            except BaseException:
                self._undo(req.network, who, att)
                raise
            if att.ports:
                self._ports_changed()
            log.info(
                "cni: %s/%s on %s: %s", req.container_id[:12], req.ifname, net.name,
                ", ".join(str(a) for a in att.addresses),
            )  # fmt: skip
            return att, net

    def _check_port(self, p: PortMapping) -> None:
        kv = self._store.get(p.claim_key)
        if kv is not None:
            holder = json.loads(kv.value).get("container", "?")
            raise Conflict(
                f"host port {p.host_port}/{p.proto} is already published by {holder}",
                port=str(p),
            )
        self._probe(p)

    def _allocate(self, req: AttachRequest, net: Network, who: str) -> Attachment:
        v4 = v6 = None
        want4 = next((i for i in req.ips if i.version == 4), None)
        want6 = next((i for i in req.ips if i.version == 6), None)
        if want6 is not None and net.ipv6 is None:
            raise InvalidArgument(f"network {net.name} has no IPv6 subnet", network=net.name)
        if net.ipv4 is not None or want4 is not None:
            v4 = self._ipam.allocate(net, who, 4, want4)
        if net.ipv6 is not None:
            v6 = self._ipam.allocate(net, who, 6, want6)
        eid = secrets.token_hex(16)
        mac = req.mac
        if not mac:
            # As ``cove run``: the MAC follows the IPv4 address.
            tail = v4.packed if isinstance(v4, ipaddress.IPv4Address) else secrets.token_bytes(4)
            mac = "02:42:" + ":".join(f"{b:02x}" for b in tail)
        return Attachment(
            node=self.node, container_id=req.container_id, ifname=req.ifname,
            network=net.name, netns=req.netns, endpoint_id=eid,
            host_veth=cni_veth_name(eid), mac=mac,
            ipv4=v4, ipv6=v6,  # type: ignore[arg-type]
            pod_name=req.pod_name, ports=req.ports, services=req.services,
            created=self._time(),
        )  # fmt: skip

    def _endpoint(self, att: Attachment, req: AttachRequest) -> Endpoint:
        name = att.pod_name.lower()
        if not _POD.match(name):  # not a name DNS can carry: the short id
            name = att.container_id[:12].lower()
        aliases = list(req.aliases)
        dns_name = name.replace("_", "-")
        if dns_name != name and dns_name not in aliases:
            aliases.append(dns_name)
        return Endpoint(
            id=att.endpoint_id, network=att.network, container_id=att.container_id,
            container_name=name, interface=att.ifname, host_veth=att.host_veth, mac=att.mac,
            ipv4=att.ipv4, ipv6=att.ipv6, aliases=tuple(aliases), hostname="",
            netns=att.netns, services=att.services, node=att.node,
        )  # fmt: skip

    def _write(self, att: Attachment, req: AttachRequest) -> None:
        ep = self._endpoint(att, req)
        claim = _encode({"container": ep.container_name, "id": att.container_id, "cni": att.key})
        compares = [Compare.absent(att.key), Compare.present(NETWORKS + att.network)]
        compares += [Compare.absent(p.claim_key) for p in att.ports]
        puts = [Put(att.key, _encode(att.to_json())), Put(att.endpoint_key, _encode(ep.to_json()))]
        puts += [Put(p.claim_key, claim) for p in att.ports]
        if self._store.txn(compares, puts).succeeded:
            return
        if self._store.get(att.key) is not None:
            raise AlreadyExists(f"{att.container_id[:12]}/{att.ifname} is already attached")
        self._network(att.network)
        for p in att.ports:
            self._check_port(p)
        raise Conflict("the attachment could not be stored: concurrent change")

    def _plug(self, att: Attachment, net: Network) -> None:
        addrs: list[Interface] = []
        gateways: list[Gateway] = []
        if att.ipv4 is not None and net.ipv4 is not None:
            addrs.append(ipaddress.IPv4Interface(f"{att.ipv4}/{net.ipv4.cidr.prefixlen}"))
            gateways.append(net.ipv4.gateway)
        if att.ipv6 is not None and net.ipv6 is not None:
            addrs.append(ipaddress.IPv6Interface(f"{att.ipv6}/{net.ipv6.cidr.prefixlen}"))
            gateways.append(net.ipv6.gateway)
        with self._bound(att.container_id, att.ifname, att.netns) as ref, self._dp.session():
            try:
                # The same request ``cove run`` and ``connect`` make; it
                # leaves nothing behind when it fails.
                self._dp.attach(
                    ref, att.host_veth, att.ifname, att.mac, net.mtu, net.bridge, addrs, gateways
                )
            except DatapathError:
                # Only now look why: the namespace is read on failure alone.
                inside = self._dp.observe([ref], []).netns.get(ref)
                if inside is not None and att.ifname in inside.links:
                    raise AlreadyExists(
                        f"an interface {att.ifname} already exists in {att.netns}",
                        ifname=att.ifname,
                    ) from None
                raise

    def _undo(self, network: str, who: str, att: Attachment | None) -> None:
        """Take back everything an attach made (its error is raised after)."""
        with contextlib.suppress(CoveError):
            if att is not None:
                self._dp.delete_link(att.host_veth)
                self._delete_records(att)
                self._unguard(att)
            self._ipam.release_owner(network, who)

    def _delete_records(self, att: Attachment) -> None:
        # The endpoint at the key of before the per-node layout too: one
        # written by an older agent that this one has not moved.
        ops: list[Delete] = [
            Delete(att.key),
            Delete(att.endpoint_key),
            Delete(legacy_endpoint_key(att.network, att.endpoint_id)),
        ]
        for p in att.ports:
            kv = self._store.get(p.claim_key)
            if kv is not None and json.loads(kv.value).get("cni") == att.key:
                ops.append(Delete(p.claim_key))
        self._store.txn([], list(ops))

    # -- detach ----------------------------------------------------------------

    def detach(
        self, cid: str, ifname: str, network: str = "", netns: str = ""
    ) -> Attachment | None:
        """Remove an attachment: veth, records, addresses. Fine when any
        of them (or the runtime's namespace) is gone already; the
        namespace itself is never deleted. The attachment removed, if any."""
        with self._locked(cid, ifname):
            att = self.get(cid, ifname)
            if att is not None:
                self._unplug(att, netns)
                self._delete_records(att)
                try:
                    self._unguard(att)
                except CoveError as exc:  # the next whole-table pass drops them
                    log.warning("guard entries of %s: %s", att.host_veth, exc.message)
                self._ipam.release_owner(att.network, owner(self.node, cid, ifname))
                if att.ports:
                    self._ports_changed()
                log.info("cni: %s/%s off %s", cid[:12], ifname, att.network)
            # An ADD cut short by a crash between address and record.
            if network and (att is None or att.network != network):
                with contextlib.suppress(CoveError):
                    self._ipam.release_owner(network, owner(self.node, cid, ifname))
            return att

    def _unplug(self, att: Attachment, netns: str) -> None:
        """Take the veth pair out of service: retired at once (down, the
        container's end renamed so ``ifname`` is free again) and deleted
        in a batch later, as ``disconnect`` does, when the namespace is
        known and there; else deleted now (the peer goes with it)."""
        path = netns or att.netns
        if path and Path(path).exists():
            try:
                with self._bound(att.container_id, att.ifname, path) as ref:
                    self._dp.retire_veth(ref, att.host_veth)
                self._retired()
                return
            except CoveError as exc:
                log.info("retire %s: %s; deleting it now", att.host_veth, exc.message)
        self._dp.delete_link(att.host_veth)

    # -- check -----------------------------------------------------------------

    def check(self, cid: str, ifname: str, netns: str, prev: Mapping[str, Any]) -> None:
        """Raises when the attachment is not as ADD left it: ``NotFound``
        (no record), ``Conflict`` naming what differs: the container's
        interface (there, up, its MAC and addresses), its host-side veth
        (there, up, on the network's bridge), the default routes of
        ``prev`` and the addresses cove's IPAM holds for it."""
        att = self.get(cid, ifname)
        if att is None:
            raise NotFound(f"no attachment {cid[:12]}/{ifname}", container=cid)
        net = self._network(att.network)  # still there
        fix = "; re-create the container (the runtime's DEL, then ADD) to repair it"
        for addr in att.addresses:
            kv = self._store.get(f"{IPAM}{att.network}/{addr}")
            if kv is None or json.loads(kv.value).get("owner") != owner(self.node, cid, ifname):
                raise Conflict(
                    f"address {addr} is no longer held for {cid[:12]}/{ifname}{fix}",
                    container=cid,
                )
        with self._bound(cid, ifname, netns) as ref:
            seen = self._dp.observe([ref], [att.host_veth])
        inside = seen.netns.get(ref)
        link = inside.links.get(ifname) if inside is not None else None
        if inside is None or link is None:
            raise Conflict(f"{ifname} is missing from {netns}{fix}", ifname=ifname)
        if link.mac.lower() != att.mac.lower():
            raise Conflict(f"{ifname} has MAC {link.mac}, not {att.mac}{fix}", ifname=ifname)
        if not link.up:
            raise Conflict(f"{ifname} in {netns} is down{fix}", ifname=ifname)
        have = {str(a.ip) for a in link.addresses}
        for addr in att.addresses:
            if str(addr) not in have:
                raise Conflict(f"{ifname} in {netns} lacks {addr}{fix}", ifname=ifname)
        host = seen.veths.get(att.host_veth)
        if host is None:
            raise Conflict(
                f"host veth {att.host_veth} of {cid[:12]}/{ifname} is missing{fix}",
                veth=att.host_veth,
            )
        if host.master != net.bridge:
            where = f"on {host.master}" if host.master else "on no bridge"
            raise Conflict(
                f"host veth {att.host_veth} of {cid[:12]}/{ifname} is {where}, not on "
                f"network {net.name}'s bridge {net.bridge}: reattach it "
                f"(ip link set dev {att.host_veth} master {net.bridge}){fix}",
                veth=att.host_veth,
            )
        if not host.up:
            raise Conflict(f"host veth {att.host_veth} of {cid[:12]}/{ifname} is down{fix}")
        _check_prev(prev, ifname, netns, link.mac, have, inside.gateway4, inside.gateway6, fix)

    # -- gc and status ---------------------------------------------------------

    def gc(self, network: str, valid: Iterable[tuple[str, str]]) -> builtins.list[str]:
        """Detach this node's attachments of ``network`` that are not in
        ``valid``, and release addresses of this node's attachments that
        never got a record; keeps going on errors. The errors, if any."""
        keep = set(valid)
        errors: builtins.list[str] = []
        for att in self.list(network):
            if (att.container_id, att.ifname) in keep:
                continue
            try:
                self.detach(att.container_id, att.ifname, network)
            except CoveError as exc:
                errors.append(f"{att.container_id[:12]}/{att.ifname}: {exc.message}")
        recorded = {owner(self.node, a.container_id, a.ifname) for a in self.list(network)}
        mine = f"cni:{self.node}/"
        valid_owners = {owner(self.node, c, i) for c, i in keep}
        for _addr, who in self._ipam.allocations(network).items():
            if who.startswith(mine) and who not in recorded and who not in valid_owners:
                try:
                    self._ipam.release_owner(network, who)
                except CoveError as exc:
                    errors.append(f"{who}: {exc.message}")
        return errors

    def status(self, network: str) -> tuple[int, str]:
        """(0, "") when an ADD on ``network`` can succeed; (50, why) when it
        cannot; (51, why) when existing attachments may be cut off too."""
        problem = self._problem()
        if problem:
            return 51, f"cove's datapath is not reconciled: {problem}"
        kv = self._store.get(NETWORKS + network)
        if kv is None:
            return 50, f"network {network} not found"
        net = Network.from_json(json.loads(kv.value))
        if net.ipv4 is not None:
            size = net.ipv4.cidr.num_addresses - 3  # network, gateway, broadcast
            used = len(self._ipam.allocations(network))
            if used >= size:
                return 50, f"network {network} has no free address"
        return 0, ""


def _check_prev(
    prev: Mapping[str, Any],
    ifname: str,
    netns: str,
    mac: str,
    have: set[str],
    gw4: ipaddress.IPv4Address | None,
    gw6: ipaddress.IPv6Address | None,
    fix: str,
) -> None:
    """What ``prev`` (the ADD result) says of the container's interface:
    its addresses, its MAC and its default routes, against the kernel's."""
    for ip in prev.get("ips") or []:
        text = str(ip.get("address", "")).split("/", 1)[0] if isinstance(ip, dict) else ""
        if text and text not in have:
            raise Conflict(f"{ifname} in {netns} lacks {text} of the previous result{fix}")
    for iface in prev.get("interfaces") or []:
        if (
            isinstance(iface, dict)
            and iface.get("name") == ifname
            and iface.get("sandbox")
            and str(iface.get("mac", "")).lower() not in ("", mac.lower())
        ):
            raise Conflict(f"{ifname} has MAC {mac}, not {iface.get('mac')}{fix}")
    for route in prev.get("routes") or []:
        if not isinstance(route, dict):
            continue
        dst, gw = str(route.get("dst", "")), route.get("gw")
        if dst not in ("0.0.0.0/0", "::/0"):
            continue  # only default routes are cove's to make
        actual = gw4 if dst == "0.0.0.0/0" else gw6
        if actual is None:
            raise Conflict(f"{netns} has no default route ({dst}) of the previous result{fix}")
        if gw and str(actual) != str(gw):
            raise Conflict(f"{netns}'s default route ({dst}) is via {actual}, not {gw}{fix}")


def result_json(att: Attachment, net: Network, domain: str = "cove") -> dict[str, Any]:
    """The ADD result (1.0.0's shape): the bridge, the host veth, the
    container's interface and its addresses."""
    ips: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for addr, sub, dst in (
        (att.ipv4, net.ipv4, "0.0.0.0/0"),
        (att.ipv6, net.ipv6, "::/0"),
    ):
        if addr is None or sub is None:
            continue
        ips.append(
            {
                "address": f"{addr}/{sub.cidr.prefixlen}",
                "gateway": str(sub.gateway),
                "interface": 2,
            }
        )
        routes.append({"dst": dst, "gw": str(sub.gateway)})
    nameservers = [str(net.ipv4.gateway)] if net.ipv4 is not None else []
    return {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": net.bridge},
            {"name": att.host_veth},
            {"name": att.ifname, "mac": att.mac, "sandbox": att.netns},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {"nameservers": nameservers, "search": [f"{net.name}.{domain}"]}
        if nameservers
        else {},
    }


def published(
    attachments: Sequence[Attachment], networks: Mapping[str, Network]
) -> list[Published]:
    """The published ports of ``attachments``, for the port table."""
    out: list[Published] = []
    for att in attachments:
        net = networks.get(att.network)
        if net is None or not att.ports:
            continue
        name = att.pod_name or att.container_id[:12]
        out.extend(Published(m, att.ipv4, att.ipv6, net.bridge, name) for m in att.ports)
    return out
