"""VIP allocation over the store.

A VIP is two keys written in one transaction: ``lb/vips/<service>`` (the
settings) and ``lb/ips/<address>`` (the reservation). Both are created only
if absent, so two agents can never hand out the same address, and a failed
request writes nothing.
"""

from __future__ import annotations

import builtins
import ipaddress
import json
import logging
from collections.abc import Sequence
from dataclasses import replace

from cove.errors import AlreadyExists, CasFailed, Conflict, InvalidArgument, IpamExhausted, NotFound
from cove.lb.model import DEFAULT_VIP_RANGES, VIP_IPS, VIPS, Proto, Vip
from cove.model import NETWORKS, IPAddress, IPNetwork, Network
from cove.store.base import Compare, Delete, Put, Store

log = logging.getLogger(__name__)

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def check_service_name(name: str) -> str:
    low = name.lower()
    if not low or len(low) > 200 or not set(low) <= _NAME_CHARS:
        raise InvalidArgument(f"invalid service name {name!r}")
    return low


class VipService:
    """Hands out and frees service VIPs from ``ranges``."""

    def __init__(self, store: Store, ranges: Sequence[IPNetwork] = DEFAULT_VIP_RANGES) -> None:
        if not ranges:
            raise InvalidArgument("at least one VIP range is needed")
        self._store = store
        self._ranges = tuple(ranges)

    @property
    def ranges(self) -> tuple[IPNetwork, ...]:
        return self._ranges

    def get(self, service: str) -> Vip:
        kv = self._store.get(VIPS + check_service_name(service))
        if kv is None:
            raise NotFound(f"service {service!r} has no VIP", service=service)
        return Vip.from_json(json.loads(kv.value))

    def list(self) -> builtins.list[Vip]:
        return [Vip.from_json(json.loads(kv.value)) for kv in self._store.range(VIPS).kvs]

    def assign(
        self,
        service: str,
        address: IPAddress | None = None,
        *,
        port: int | None = None,
        protocols: Sequence[Proto] = (Proto.TCP, Proto.UDP),
        affinity_timeout: int = 0,
    ) -> Vip:
        """Give ``service`` a VIP (``address``, or the lowest free one).

        Idempotent for a service that already has the address asked for (its
        settings are updated). Raises ``InvalidArgument`` for an address
        outside the VIP ranges, ``Conflict`` when the address is another
        service's or inside a cove network, ``AlreadyExists`` when the
        service has a different VIP, ``IpamExhausted`` when no address is free.
        """
        name = check_service_name(service)
        current = self._store.get(VIPS + name)
        if current is not None:
            vip = Vip.from_json(json.loads(current.value))
            if address is not None and address != vip.address:
                raise AlreadyExists(
                    f"service {name!r} already has VIP {vip.address}; remove it first",
                    service=name,
                    vip=vip.address,
                )
            updated = replace(
                vip, port=port, protocols=tuple(protocols), affinity_timeout=affinity_timeout
            )
            if updated != vip:
                self._write(updated, [Compare.mod_is(VIPS + name, current.mod_revision)], new=False)
            return updated
        if address is not None:
            self._check_address(address)
            return self._create(name, address, port, protocols, affinity_timeout)
        for candidate in self._candidates():
            try:
                return self._create(name, candidate, port, protocols, affinity_timeout)
            except Conflict:
                continue
        raise IpamExhausted("no free VIP left in " + ", ".join(map(str, self._ranges)))

    def release(self, service: str) -> None:
        """Take a service's VIP away. Raises ``NotFound`` when it has none."""
        vip = self.get(service)
        self._store.txn(
            [],
            [Delete(VIPS + vip.service), Delete(VIP_IPS + str(vip.address))],
        )

    def _check_address(self, address: IPAddress) -> None:
        if not any(address.version == r.version and address in r for r in self._ranges):
            raise InvalidArgument(
                f"{address} is outside the VIP range " + ", ".join(str(r) for r in self._ranges),
                address=address,
            )
        for net in self._networks():
            for sub in net.subnets:
                if address.version == sub.cidr.version and address in sub.cidr:
                    raise Conflict(
                        f"{address} is inside network {net.name!r} ({sub.cidr})", address=address
                    )

    def _networks(self) -> builtins.list[Network]:
        out = []
        for kv in self._store.range(NETWORKS).kvs:
            try:
                out.append(Network.from_json(json.loads(kv.value)))
            except (ValueError, KeyError):
                continue
        return out

    def _candidates(self) -> builtins.list[IPAddress]:
        taken = {kv.key[len(VIP_IPS) :] for kv in self._store.range(VIP_IPS).kvs}
        nets = [s.cidr for n in self._networks() for s in n.subnets]
        out: builtins.list[IPAddress] = []
        for rng in self._ranges:
            for host in rng.hosts():
                if str(host) in taken or any(host.version == c.version and host in c for c in nets):
                    continue
                out.append(host)
                if len(out) >= 8:  # a few, for races with other agents
                    return out
        return out

    def _create(
        self,
        name: str,
        address: IPAddress,
        port: int | None,
        protocols: Sequence[Proto],
        affinity_timeout: int,
    ) -> Vip:
        vip = Vip(name, address, port, tuple(protocols), affinity_timeout)
        try:
            self._write(
                vip, [Compare.absent(VIPS + name), Compare.absent(VIP_IPS + str(address))], new=True
            )
        except CasFailed as exc:
            holder = self._store.get(VIP_IPS + str(address))
            if holder is not None:
                raise Conflict(
                    f"VIP {address} is taken by service {holder.value.decode()!r}",
                    address=address,
                ) from exc
            raise Conflict(f"service {name!r} got a VIP concurrently", service=name) from exc
        log.info("service %s has VIP %s", name, address)
        return vip

    def _write(self, vip: Vip, compares: builtins.list[Compare], *, new: bool) -> None:
        ops = [Put(VIPS + vip.service, json.dumps(vip.to_json()).encode())]
        if new:
            ops.append(Put(VIP_IPS + str(vip.address), vip.service.encode()))
        result = self._store.txn(compares, ops)
        if not result.succeeded:
            raise CasFailed("the VIP changed concurrently", service=vip.service)


def parse_range(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise InvalidArgument(f"invalid VIP range {text!r}") from exc
