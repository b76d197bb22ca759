"""`cove network ...`"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cove.cli.client import AgentClient
from cove.cli.output import print_table
from cove.errors import InvalidArgument


def parse_labels(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"invalid label {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    net = sub.add_parser("network", help="manage virtual networks")
    nsub = net.add_subparsers(dest="network_cmd", required=True, metavar="COMMAND")

    p = nsub.add_parser("create", help="create a network")
    p.add_argument("name")
    p.add_argument("--subnet", action="append", default=[], help="CIDR (repeat for IPv6)")
    p.add_argument("--gateway", action="append", default=[])
    p.add_argument("--ip-range", action="append", default=[])
    p.add_argument("--ipv6", action="store_true", help="also give the network an IPv6 subnet")
    p.add_argument("--internal", action="store_true", help="no egress, no upstream DNS")
    p.add_argument(
        "--mtu", type=int, default=None, help="default 1500; overlay: the underlay's minus 50"
    )
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--default-deny", action="store_true", help="deny traffic without a policy")
    p.add_argument(
        "--driver",
        choices=("bridge", "overlay"),
        default="bridge",
        help="bridge: this host only (default); overlay: across hosts over VXLAN",
    )
    p.add_argument("--vni", type=int, default=None, help="overlay: VXLAN id (default: chosen)")
    p.set_defaults(func=_create)

    p = nsub.add_parser("ls", help="list networks")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    p.set_defaults(func=_ls)

    p = nsub.add_parser("inspect", help="show a network as JSON")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=_inspect)

    p = nsub.add_parser("rm", help="remove networks")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=_rm)

    p = nsub.add_parser("prune", help="remove every network without containers")
    p.set_defaults(func=_prune)
    return nsub  # type: ignore[return-value]


def _create(args: argparse.Namespace, client: AgentClient) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "subnets": args.subnet,
        "gateways": args.gateway,
        "ip_ranges": args.ip_range,
        "ipv6": args.ipv6,
        "internal": args.internal,
        "mtu": args.mtu,
        "labels": parse_labels(args.label),
        "default_deny": args.default_deny,
        "driver": args.driver,
    }
    if args.mtu is not None:
        body["mtu"] = args.mtu
    if args.vni is not None:
        body["vni"] = args.vni
    net = client.request("POST", "/api/networks", body)
    print(net["id"])
    return 0


def _ls(args: argparse.Namespace, client: AgentClient) -> int:
    nets = client.request("GET", "/api/networks")
    if args.format == "json":
        print(json.dumps(nets, indent=2))
    elif args.quiet:
        for n in nets:
            print(n["name"])
    else:
        rows = [
            [
                n["id"],
                n["name"],
                ",".join(s["subnet"] for s in n["subnets"]),
                "internal" if n["internal"] else n.get("driver", "bridge"),
                n["bridge"],
                ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())),
            ]
            for n in nets
        ]
        print_table(["ID", "NAME", "SUBNETS", "TYPE", "BRIDGE", "LABELS"], rows)
    return 0


def _inspect(args: argparse.Namespace, client: AgentClient) -> int:
    out = [client.request("GET", f"/api/networks/{name}") for name in args.names]
    for net in out:  # containers of other runtimes, attached through cove-cni
        net["cni_attachments"] = client.request(
            "GET", f"/api/cni/attachments?node=*&network={net['name']}"
        )
    print(json.dumps(out, indent=2))
    return 0


def _rm(args: argparse.Namespace, client: AgentClient) -> int:
    for name in args.names:
        client.request("DELETE", f"/api/networks/{name}")
        print(name)
    return 0


def _prune(args: argparse.Namespace, client: AgentClient) -> int:
    res = client.request("POST", "/api/networks/prune")
    for name in res["removed"]:
        print(name)
    return 0
