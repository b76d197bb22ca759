"""The address an agent advertises to the other nodes (``--advertise``):
checked to be one of this host's addresses, or found from the default
route."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from cove.errors import InvalidArgument

log = logging.getLogger(__name__)

# Documentation addresses (RFC 5737, RFC 3849): a UDP connect to them only
# asks the kernel for a route; no packet is sent.
_PROBE4 = "203.0.113.1"
_PROBE6 = "2001:db8::1"


def check_local(address: str) -> str:
    """``address``, normalized, if this host has it; ``InvalidArgument``
    (exit 2) naming the problem otherwise."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise InvalidArgument(
            f"invalid --advertise {address!r}: expected an IPv4 or IPv6 address"
        ) from None
    if ip.is_unspecified or ip.is_multicast:
        raise InvalidArgument(
            f"invalid --advertise {ip}: name one address of this host that the other"
            " hosts can reach"
        )
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((str(ip), 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(
                    f"--advertise {ip} is not an address of this host: name one of its"
                    " addresses (see `ip addr`)"
                ) from None
            raise
    return str(ip)


def default_address() -> str | None:
    """The source address of the default route (IPv4, else IPv6), or None
    when there is no default route."""
    for family, probe in ((socket.AF_INET, _PROBE4), (socket.AF_INET6, _PROBE6)):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                addr = ipaddress.ip_address(sock.getsockname()[0])
        except OSError:
            continue
        if not addr.is_loopback and not addr.is_unspecified:
            return str(addr)
    return None


def first_global_address() -> str | None:
    """The first global-scope address of any interface (IPv4 first)."""
    from pyroute2 import IPRoute

    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            if msg.get("scope", 0) != 0:
                continue
            text = msg.get_attr("IFA_ADDRESS")
            if not text:
                continue
            addr = ipaddress.ip_address(text)
            if not addr.is_loopback and not addr.is_link_local:
                found.append(addr)
    found.sort(key=lambda a: a.version)
    return str(found[0]) if found else None


def resolve(advertise: str | None, *, shared_store: bool) -> str:
    """The address to advertise: ``advertise`` when given (checked); else
    127.0.0.1 for a host-local store (SQLite, memory), and for a shared one
    (etcd) the default route's source address, else the first global one."""
    if advertise:
        return check_local(advertise)
    if not shared_store:
        return "127.0.0.1"
    found = default_address() or first_global_address()
    if found is None:
        # A host with no network but loopback can only be a one-host cluster.
        log.warning(
            "no default route and no global address: advertising 127.0.0.1, which other"
            " hosts cannot reach (give --advertise ADDR)"
        )
        return "127.0.0.1"
    return found
