"""What a user asks for when creating a network, validated before anything
is written. Pure: turning a spec into a ``Network`` needs only the subnets
already in use, which the caller reads."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cove.errors import Conflict, InvalidArgument
from cove.ipam import pool
from cove.model import IPAddress, IPNetwork, Network, NetworkDriver, Subnet

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_NAME = 63

# VXLAN network identifiers are 24 bits; 0 is left out (some switches treat
# it as "no VNI"), and cove allocates from VNI_FIRST up.
VNI_MIN = 1
VNI_MAX = (1 << 24) - 1
VNI_FIRST = 4096
# The VXLAN header (8), outer UDP (8), IPv4 (20) and Ethernet (14) bytes.
VXLAN_OVERHEAD = 50
UNDERLAY_MTU = 1500


def check_name(name: str, what: str = "network") -> str:
    """A name that is a DNS label, since it is used in DNS names
    (``redis.vnet.cove``)."""
    if len(name) > MAX_NAME:
        raise InvalidArgument(
            f"{what} name {name[:20]!r}... is {len(name)} characters; at most {MAX_NAME}",
            name=name,
        )
    if not _LABEL.match(name):
        raise InvalidArgument(
            f"invalid {what} name {name!r}: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
            name=name,
        )
    return name


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    name: str
    subnets: Sequence[str] = ()
    gateways: Sequence[str] = ()
    ip_ranges: Sequence[str] = ()
    ipv6: bool = False
    internal: bool = False
    mtu: int | None = None  # default: 1500, or the underlay's minus VXLAN_OVERHEAD
    labels: Mapping[str, str] = field(default_factory=dict)
    default_deny: bool = False
    driver: NetworkDriver = NetworkDriver.BRIDGE
    vni: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> NetworkSpec:
        """From an API body; every field is type-checked."""
        if not isinstance(data, Mapping):
            raise InvalidArgument("request body must be a JSON object")
        name = data.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("'name' is required and must be a string")
        mtu = data.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)):
            raise InvalidArgument("'mtu' must be an integer")
        driver = data.get("driver", "bridge")
        if driver not in tuple(NetworkDriver):
            raise InvalidArgument(
                f"unknown network driver {driver!r}: use 'bridge' (this host only) "
                "or 'overlay' (across hosts)",
                driver=str(driver),
            )
        vni = data.get("vni")
        if vni is not None and (not isinstance(vni, int) or isinstance(vni, bool)):
            raise InvalidArgument("'vni' must be an integer")
        if vni is not None and driver != NetworkDriver.OVERLAY:
            raise InvalidArgument("'vni' is only for overlay networks: add --driver overlay")
        labels = data.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidArgument("'labels' must be an object of strings")
        return cls(
            name=name,
            subnets=_strings(data, "subnets"),
            gateways=_strings(data, "gateways"),
            ip_ranges=_strings(data, "ip_ranges"),
            ipv6=_bool(data, "ipv6"),
            internal=_bool(data, "internal"),
            mtu=mtu,
            labels=dict(labels),
            default_deny=_bool(data, "default_deny"),
            driver=NetworkDriver(str(driver)),
            vni=vni,
        )


def build_network(
    spec: NetworkSpec,
    taken: Iterable[tuple[str, IPNetwork]],
    host_networks: Iterable[IPNetwork],
    created: float,
    network_id: str | None = None,
    reserved: Iterable[IPNetwork] = (),
    vnis: Mapping[int, str] | None = None,
) -> Network:
    """Validate ``spec`` and choose what it leaves open (subnets, gateways).

    ``taken`` is (network name, subnet) of every existing cove network;
    ``host_networks`` the host's routes and addresses; ``reserved`` ranges
    cove keeps for other uses (service VIPs); ``vnis`` the VNIs overlay
    networks hold (VNI -> network name). Raises ``InvalidArgument`` or
    ``Conflict`` naming the problem.
    """
    check_name(spec.name)
    overlay = spec.driver == NetworkDriver.OVERLAY
    mtu = spec.mtu
    if mtu is None:
        mtu = UNDERLAY_MTU - VXLAN_OVERHEAD if overlay else UNDERLAY_MTU
    if not 68 <= mtu <= 65535:
        raise InvalidArgument(f"mtu {mtu} is out of range (68-65535)", mtu=mtu)
    vni = choose_vni(spec.vni, vnis or {}) if overlay else None
    taken_list = list(taken)
    host_list = list(host_networks)
    reserved_list = list(reserved)
    wanted = [pool.parse_subnet(s) for s in spec.subnets]
    families = [n.version for n in wanted]
    for fam in (4, 6):
        if families.count(fam) > 1:
            raise InvalidArgument(f"at most one IPv{fam} subnet per network")
    gateways = [pool.parse_address(g) for g in spec.gateways]
    ranges = [pool.parse_subnet(r) if "/" in r else _bad_range(r) for r in spec.ip_ranges]
    for net in wanted:
        clash = next((name for name, sub in taken_list if sub.overlaps(net)), None)
        if clash is not None:
            raise Conflict(f"subnet {net} overlaps network {clash}", subnet=net, network=clash)
        host = pool.overlapping(net, host_list)
        if host is not None:
            raise Conflict(f"subnet {net} overlaps host route or address {host}", subnet=net)
        vip = pool.overlapping(net, reserved_list)
        if vip is not None:
            raise Conflict(f"subnet {net} overlaps the service VIP range {vip}", subnet=net)
    used = [sub for _, sub in taken_list] + host_list + reserved_list
    if 4 not in families:
        wanted.insert(0, _auto(4, used))
    if spec.ipv6 and 6 not in families:
        wanted.append(_auto(6, used))
    if spec.ipv6 and mtu < 1280:
        raise InvalidArgument(f"mtu {mtu} is below IPv6's minimum of 1280")
    subnets = tuple(_subnet(net, gateways, ranges) for net in wanted)
    for gw in gateways:
        if not any(gw.version == s.cidr.version for s in subnets):
            raise InvalidArgument(f"gateway {gw} has no subnet of its address family")
    for rng in ranges:
        if not any(rng.version == s.cidr.version for s in subnets):
            raise InvalidArgument(f"ip-range {rng} has no subnet of its address family")
    nid = network_id or secrets.token_hex(6)
    return Network(
        id=nid,
        name=spec.name,
        subnets=subnets,
        bridge=f"cv-{nid[:12]}",
        internal=spec.internal,
        mtu=mtu,
        labels=dict(spec.labels),
        driver=spec.driver,
        default_deny=spec.default_deny,
        created=created,
        vni=vni,
    )


def choose_vni(wanted: int | None, taken: Mapping[int, str]) -> int:
    """``wanted`` if it is in range and free, else the lowest free VNI from
    ``VNI_FIRST``. Raises ``InvalidArgument`` or ``Conflict``."""
    if wanted is not None:
        if not VNI_MIN <= wanted <= VNI_MAX:
            raise InvalidArgument(f"vni {wanted} is out of range ({VNI_MIN}-{VNI_MAX})", vni=wanted)
        holder = taken.get(wanted)
        if holder is not None:
            raise Conflict(
                f"vni {wanted} is already used by network {holder}: choose another "
                "or leave out --vni to have one chosen",
                vni=wanted,
                network=holder,
            )
        return wanted
    for vni in range(VNI_FIRST, VNI_MAX + 1):
        if vni not in taken:
            return vni
    raise Conflict("every VNI is in use")  # pragma: no cover - 16 million networks


def _auto(family: int, used: list[IPNetwork]) -> IPNetwork:
    pools = pool.DEFAULT_POOLS_V4 if family == 4 else pool.DEFAULT_POOLS_V6
    prefix = pool.DEFAULT_PREFIX_V4 if family == 4 else pool.DEFAULT_PREFIX_V6
    return pool.choose_subnet(
        (pool.parse_subnet(p) for p in pools), prefix, (u for u in used if u.version == family)
    )


def _subnet(net: IPNetwork, gateways: list[IPAddress], ranges: list[IPNetwork]) -> Subnet:
    gw = next((g for g in gateways if g.version == net.version), None)
    if gw is None:
        gw = pool.default_gateway(net)
    pool.check_gateway(net, gw)
    rng = next((r for r in ranges if r.version == net.version), None)
    if rng is not None and not rng.subnet_of(net):  # type: ignore[arg-type]
        raise InvalidArgument(f"ip-range {rng} is not inside subnet {net}", ip_range=rng)
    return Subnet(cidr=net, gateway=gw, ip_range=rng)


def _bad_range(text: str) -> IPNetwork:
    raise InvalidArgument(f"invalid ip-range {text!r}: expected a CIDR such as 10.89.0.128/25")


def _strings(data: Mapping[str, object], key: str) -> list[str]:
    value = data.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"'{key}' must be a list of strings")
    return list(value)


def _bool(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"'{key}' must be true or false")
    return value
