"""`cove network ...`"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from cove.cli.client import AgentClient
from cove.cli.output import emit, print_table
from cove.errors import CoveError, InvalidArgument, NotFound
from cove.naming import SHORT_ID


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
    p.add_argument(
        "--format", default="table",
        help="table, json, or a template: '{{.Name}} {{.Id}}'",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    p.add_argument("--no-trunc", action="store_true", help="full IDs")
    p.set_defaults(func=_ls)

    p = nsub.add_parser("inspect", help="show networks as JSON (always a list)")
    p.add_argument("-f", "--format", default="json", help="json or a template: '{{.Subnets}}'")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(func=_inspect)

    p = nsub.add_parser("rm", help="remove networks")
    p.add_argument(
        "-f", "--force", action="store_true", help="no error for a network that does not exist"
    )
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(func=_rm)

    p = nsub.add_parser("prune", help="remove every network without containers")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE",
        help="label=K[=V], label!=K[=V], until=TIME (10m, 2024-01-02T15:04:05Z)",
    )  # fmt: skip
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
    if args.quiet:
        for n in nets:
            print(n["name"])
    else:
        emit(nets, args.format, lambda items: _ls_table(items, args.no_trunc))
    return 0


def _ls_table(nets: Sequence[Mapping[str, Any]], no_trunc: bool) -> None:
    rows = [
        [
            n["id"] if no_trunc else n["id"][:SHORT_ID],
            n["name"],
            ",".join(s["subnet"] for s in n["subnets"]),
            "internal" if n["internal"] else n.get("driver", "bridge"),
            n["bridge"],
            ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())),
        ]
        for n in nets
    ]
    print_table(["ID", "NAME", "SUBNETS", "TYPE", "BRIDGE", "LABELS"], rows)


def _inspect(args: argparse.Namespace, client: AgentClient) -> int:
    out, failed = [], 0
    for ref in args.names:
        try:
            net = client.request("GET", f"/api/networks/{quote(ref, safe='')}")
        except CoveError as exc:
            failed = failed or exc.exit_code
            print(f"cove: error: {exc.message}", file=sys.stderr)
            continue
        # Containers of other runtimes, attached through cove-cni.
        net["cni_attachments"] = client.request(
            "GET", f"/api/cni/attachments?node=*&network={quote(net['name'], safe='')}"
        )
        out.append(net)
    if out or not failed:
        emit(out, args.format, lambda items: print(json.dumps(list(items), indent=2)))
    return failed


def _rm(args: argparse.Namespace, client: AgentClient) -> int:
    failed = 0
    for ref in args.names:
        try:
            client.request("DELETE", f"/api/networks/{quote(ref, safe='')}")
        except NotFound:
            if args.force:
                continue
            failed = failed or NotFound.exit_code
            print(f"cove: error: network {ref} not found", file=sys.stderr)
            continue
        except CoveError as exc:
            failed = failed or exc.exit_code
            print(f"cove: error: {exc.message}", file=sys.stderr)
            continue
        print(ref)
    return failed


def _prune(args: argparse.Namespace, client: AgentClient) -> int:
    if not args.force and not confirm(
        "WARNING! This will remove all networks not used by at least one container."
    ):
        print("nothing removed (answer 'y' or give -f)", file=sys.stderr)
        return 1
    query = urlencode([("filter", f) for f in args.filter])
    res = client.request("POST", "/api/networks/prune" + (f"?{query}" if query else ""))
    if res["removed"]:
        print("Deleted Networks:")
    for name in res["removed"]:
        print(name)
    return 0


def confirm(question: str) -> bool:
    """Ask on the terminal (stdin); anything but y or yes is no, as is no
    stdin at all."""
    print(f"{question}\nAre you sure you want to continue? [y/N] ", end="", flush=True)
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line:
        print()
    return line.strip().lower() in ("y", "yes")
