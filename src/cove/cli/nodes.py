"""`cove members rm NODE` (alias `cove node rm NODE`) and `cove node ls`:
removing a dead node for good, as Consul's `force-leave -prune` and
Swarm's `docker node rm` do."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from cove.cli.client import AgentClient


def add_rm(p: argparse.ArgumentParser) -> None:
    """The arguments of `members rm` and `node rm`."""
    p.add_argument("node", metavar="NODE")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="remove the node even though its agent is alive (it joins again with nothing,"
        " and its containers are stopped as orphans)",
    )
    p.set_defaults(func=member_rm)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="the cluster's nodes (as `cove members`)")
    nsub = node.add_subparsers(dest="node_cmd", required=True, metavar="COMMAND")
    p = nsub.add_parser("ls", help="list the nodes (as `cove members`)")
    p.add_argument("--format", choices=("table", "json"), default="table")

    def ls(args: argparse.Namespace, client: AgentClient) -> int:
        from cove.cli.registry import _members

        return _members(args, client)

    p.set_defaults(func=ls)
    add_rm(
        nsub.add_parser(
            "rm",
            help="remove a dead node and everything it owned: containers, addresses, ports,"
            " endpoints, services and checks",
        )
    )


def member_rm(args: argparse.Namespace, client: AgentClient) -> int:
    params = {"force": "true"} if args.force else None
    removed: dict[str, Any] = client.request(
        "DELETE", f"/api/members/{quote(args.node, safe='')}", params=params
    )
    names = removed.get("containers") or []
    print(
        f"removed node {removed.get('node', args.node)}: {len(names)} containers"
        + (f" ({', '.join(names)})" if names else "")
        + f", {removed.get('endpoints', 0)} endpoints, {removed.get('addresses', 0)} addresses,"
        f" {removed.get('ports', 0)} port claims, {removed.get('services', 0)} services,"
        f" {removed.get('checks', 0)} checks"
    )
    return 0
