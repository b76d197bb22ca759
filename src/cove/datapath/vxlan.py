"""VXLAN devices, their forwarding entries and permanent neighbours, on a
real kernel. Devices are made through netlink (pyroute2); FDB and neighbour
entries, which come and go with remote containers, as one ``bridge -batch``
and one ``ip -batch`` per change set, and are read back as iproute2's JSON.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from cove.datapath.base import VXLAN_PREFIX, FdbEntry, NeighEntry, VxlanState
from cove.errors import DatapathError

_ZERO_MAC = "00:00:00:00:00:00"


def fdb_commands(name: str, add: Iterable[FdbEntry], remove: Iterable[FdbEntry]) -> list[str]:
    """``bridge -batch`` lines: removals first, so a MAC that moved from one
    host to another ends with only its new destination."""
    out = [f"fdb del {e.mac} dev {name} dst {e.dst} self" for e in remove]
    out += [f"fdb replace {e.mac} dev {name} dst {e.dst} self permanent" for e in add]
    return out


def neigh_commands(name: str, add: Iterable[NeighEntry], remove: Iterable[NeighEntry]) -> list[str]:
    out = [f"neigh del {e.address} dev {name}" for e in remove]
    out += [f"neigh replace {e.address} lladdr {e.mac} dev {name} nud permanent" for e in add]
    return out


def parse_fdb(rows: Iterable[dict[str, Any]]) -> frozenset[FdbEntry]:
    """The remote entries of a VXLAN device (those with a destination),
    not the bridge's own entries for the port."""
    out: set[FdbEntry] = set()
    for row in rows:
        mac, dst = str(row.get("mac", "")), row.get("dst")
        if not dst or mac == _ZERO_MAC or "self" not in row.get("flags", []):
            continue
        try:
            out.add(FdbEntry(mac.lower(), ipaddress.ip_address(str(dst))))
        except ValueError:
            continue
    return frozenset(out)


def parse_neigh(rows: Iterable[dict[str, Any]]) -> frozenset[NeighEntry]:
    out: set[NeighEntry] = set()
    for row in rows:
        if "PERMANENT" not in row.get("state", []) or not row.get("lladdr"):
            continue
        try:
            out.add(NeighEntry(ipaddress.ip_address(str(row["dst"])), str(row["lladdr"]).lower()))
        except (KeyError, ValueError):
            continue
    return frozenset(out)


def parse_vxlan(link: dict[str, Any]) -> VxlanState | None:
    name = str(link.get("ifname", ""))
    info = link.get("linkinfo", {})
    if not name.startswith(VXLAN_PREFIX) or info.get("info_kind") != "vxlan":
        return None
    data = info.get("info_data", {})
    return VxlanState(
        name=name,
        vni=int(data.get("id", 0)),
        local=str(data.get("local") or data.get("local6") or ""),
        port=int(data.get("port", 0)),
        mtu=int(link.get("mtu", 0)),
        master=link.get("master"),
        up="UP" in link.get("flags", []),
        learning=bool(data.get("learning", True)),
        proxy=bool(data.get("proxy", False)),
    )


def run_json(*argv: str) -> list[dict[str, Any]]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DatapathError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    data = json.loads(proc.stdout or "[]")
    return [d for d in data if isinstance(d, dict)]


def run_batch(program: str, lines: Sequence[str]) -> None:
    """One ``program -batch -`` for ``lines``; a failed line is an error
    naming it (removals of entries already gone are not failures)."""
    if not lines:
        return
    proc = subprocess.run(
        [program, "-force", "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return
    errors = [
        line
        for line in proc.stderr.splitlines()
        if line.strip()
        and "No such file or directory" not in line
        and not line.startswith("Command failed")
    ]
    if errors:
        raise DatapathError(f"{program} batch failed: {'; '.join(errors[:4])}")


def observe() -> dict[str, VxlanState]:
    """Every cove VXLAN device with its entries."""
    out: dict[str, VxlanState] = {}
    for link in run_json("ip", "-d", "-j", "link", "show", "type", "vxlan"):
        state = parse_vxlan(link)
        if state is None:
            continue
        fdb = parse_fdb(run_json("bridge", "-j", "fdb", "show", "dev", state.name))
        neigh = parse_neigh(run_json("ip", "-j", "neigh", "show", "dev", state.name))
        out[state.name] = replace(state, fdb=fdb, neigh=neigh)
    return out
