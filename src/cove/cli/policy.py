"""`cove policy allow | ls | rm | test | default-deny`."""

from __future__ import annotations

import argparse
import json

from cove.cli.client import AgentClient
from cove.cli.output import print_table


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    pol = sub.add_parser("policy", help="network policy: who may talk to whom")
    psub = pol.add_subparsers(dest="policy_cmd", required=True, metavar="COMMAND")

    p = psub.add_parser("allow", help="allow traffic on a default-deny network")
    p.add_argument("--network", required=True)
    p.add_argument(
        "--from", dest="source", required=True, metavar="SELECTOR",
        help="NAME, container:NAME, service:NAME, KEY=VALUE[,..] or '*'",
    )  # fmt: skip
    p.add_argument("--to", dest="dest", required=True, metavar="SELECTOR")
    p.add_argument(
        "--port", action="append", default=[], metavar="PORT[/PROTO]", help="repeat; none: any"
    )
    p.add_argument("--description", default="")
    p.set_defaults(func=_allow)

    p = psub.add_parser("ls", help="list rules")
    p.add_argument("--network")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("-q", "--quiet", action="store_true", help="ids only")
    p.set_defaults(func=_ls)

    p = psub.add_parser("rm", help="remove rules")
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=_rm)

    p = psub.add_parser("test", help="would a connection pass, and which rule decides")
    p.add_argument("--from", dest="source", required=True, metavar="SELECTOR|IP")
    p.add_argument("--to", dest="dest", required=True, metavar="SELECTOR|IP")
    p.add_argument("--port", required=True, metavar="PORT[/PROTO]")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_test)

    p = psub.add_parser("default-deny", help="switch default-deny on an existing network")
    p.add_argument("network")
    p.add_argument("state", choices=("on", "off"))
    p.set_defaults(func=_default_deny)
    return pol


def _allow(args: argparse.Namespace, client: AgentClient) -> int:
    body = {
        "network": args.network,
        "from": args.source,
        "to": args.dest,
        "ports": args.port,
        "description": args.description,
    }
    rule = client.request("POST", "/api/policy/rules", body)
    print(rule["id"])
    return 0


def _ls(args: argparse.Namespace, client: AgentClient) -> int:
    params = {"network": args.network} if args.network else None
    rules = client.request("GET", "/api/policy/rules", params=params)
    if args.quiet:
        for r in rules:
            print(r["id"])
    elif args.format == "json":
        print(json.dumps(rules, indent=2))
    else:
        print_table(
            ("ID", "NETWORK", "FROM", "TO", "PORTS"),
            [
                (r["id"], r["network"], r["from"], r["to"], ",".join(r["ports"]) or "any")
                for r in rules
            ],
        )
    return 0


def _rm(args: argparse.Namespace, client: AgentClient) -> int:
    for rid in args.ids:
        client.request("DELETE", f"/api/policy/rules/{rid}")
        print(rid)
    return 0


def _test(args: argparse.Namespace, client: AgentClient) -> int:
    body = {"from": args.source, "to": args.dest, "port": args.port}
    verdicts = client.request("POST", "/api/policy/test", body)
    if args.format == "json":
        print(json.dumps(verdicts, indent=2))
    else:
        for v in verdicts:
            word = "ALLOW" if v["allowed"] else "DENY"
            print(
                f"{word}  {v['from']} ({v['from_address']}) -> {v['to']} ({v['to_address']})"
                f" port {args.port}: {v['reason']}"
            )
    # Exit 1 when any pair is denied, so scripts can test it.
    return 0 if all(v["allowed"] for v in verdicts) else 1


def _default_deny(args: argparse.Namespace, client: AgentClient) -> int:
    client.request("PUT", f"/api/policy/default-deny/{args.network}", {"on": args.state == "on"})
    return 0
