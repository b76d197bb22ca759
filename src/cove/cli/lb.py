"""`cove service vip NAME [--ip IP]`, `cove service vips`.

``add_parsers`` makes a ``service`` command with these two; when another
module owns ``cove service``, it calls ``add_vip_commands`` on its own
sub-parsers instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TypeAlias

from cove.cli.client import AgentClient
from cove.cli.output import print_table

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: SubParsers) -> argparse.ArgumentParser:
    svc = sub.add_parser("service", help="services: virtual IPs")
    ssub = svc.add_subparsers(dest="service_cmd", required=True, metavar="COMMAND")
    add_vip_commands(ssub)
    return svc


def add_vip_commands(ssub: SubParsers) -> None:
    p = ssub.add_parser("vip", help="give a service a load-balanced virtual IP (or show it)")
    p.add_argument("name")
    p.add_argument("--ip", help="the address to use (default: the next free one in the range)")
    p.add_argument("--port", type=int, help="one VIP port leading to every backend's own port")
    p.add_argument(
        "--proto", action="append", choices=("tcp", "udp"), help="protocols (default both)"
    )
    p.add_argument(
        "--affinity",
        type=int,
        default=0,
        metavar="SECONDS",
        help="keep a client IP on one backend for this long idle (0: off)",
    )
    p.add_argument("--rm", action="store_true", help="take the VIP away")
    p.set_defaults(func=_vip)

    p = ssub.add_parser("vips", help="list services with a VIP and their backends")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_vips)


def _vip(args: argparse.Namespace, client: AgentClient) -> int:
    if args.rm:
        client.request("DELETE", f"/api/vips/{args.name}")
        return 0
    body: dict[str, Any] = {
        "address": args.ip,
        "port": args.port,
        "protocols": args.proto or ["tcp", "udp"],
        "affinity_timeout": args.affinity,
    }
    vip = client.request("PUT", f"/api/vips/{args.name}", body)
    print(vip["address"])
    return 0


def _vips(args: argparse.Namespace, client: AgentClient) -> int:
    vips = client.request("GET", "/api/vips")
    if args.format == "json":
        print(json.dumps(vips, indent=2))
        return 0
    rows = []
    for v in vips:
        backends = ", ".join(
            f"{b['address']}:{b['port']}" + (f" (w{b['weight']})" if b["weight"] != 1 else "")
            for b in v["backends"]
        )
        rows.append(
            (
                v["service"],
                v["address"],
                v["port"] or "-",
                v["affinity_timeout"] or "-",
                backends or "none",
            )
        )
    print_table(("SERVICE", "VIP", "PORT", "AFFINITY", "BACKENDS"), rows)
    return 0
