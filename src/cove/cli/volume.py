"""`cove volume create|ls|inspect|rm|prune`: named volumes, as Docker's
(``-v NAME:/path`` makes one on first use; it stays after its container
is removed, until ``volume rm`` or ``volume prune``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from cove.cli.client import AgentClient
from cove.cli.containers import each
from cove.cli.network import confirm, parse_labels
from cove.cli.output import emit, print_table
from cove.errors import CoveError


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    volume = sub.add_parser("volume", help="create, list, inspect and remove named volumes")
    vsub = volume.add_subparsers(dest="volume_command", required=True, metavar="COMMAND")
    p = vsub.add_parser("create", help="create a volume (as -v NAME:/path does on first use)")
    p.add_argument("name", nargs="?", default="", help="a random name if left out")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.set_defaults(func=_create)
    p = vsub.add_parser("ls", help="list volumes")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    p.add_argument("--format", default="table", help="table, json or a {{.Field}} template")
    p.set_defaults(func=_ls)
    p = vsub.add_parser("inspect", help="show volumes as JSON (with the containers using them)")
    p.add_argument("names", nargs="+", metavar="VOLUME")
    p.add_argument("-f", "--format", default="json", help="json or a {{.Field}} template")
    p.set_defaults(func=_inspect)
    p = vsub.add_parser("rm", help="remove volumes and their data (refused while in use)")
    p.add_argument("-f", "--force", action="store_true", help="no error for a missing volume")
    p.add_argument("names", nargs="+", metavar="VOLUME")
    p.set_defaults(func=_rm)
    p = vsub.add_parser(
        "prune", help="remove the anonymous volumes no container uses, with their data"
    )
    p.add_argument("-a", "--all", action="store_true", help="named volumes too (Docker 23's rule)")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=_prune)


def _path(name: str) -> str:
    return f"/api/volumes/{quote(name, safe='')}"


def _create(args: argparse.Namespace, client: AgentClient) -> int:
    body = {"name": args.name, "labels": parse_labels(args.label)}
    print(client.request("POST", "/api/volumes", body)["name"])
    return 0


def _ls(args: argparse.Namespace, client: AgentClient) -> int:
    items: list[dict[str, Any]] = client.request("GET", "/api/volumes")
    if args.quiet:
        for v in items:
            print(v["name"])
        return 0
    emit(items, args.format, lambda rows: print_table(
        ("DRIVER", "VOLUME NAME"), [(v["driver"], v["name"]) for v in rows]
    ))  # fmt: skip
    return 0


def _inspect(args: argparse.Namespace, client: AgentClient) -> int:
    out, failed = [], 0
    for name in args.names:
        try:
            out.append(client.request("GET", _path(name)))
        except CoveError as exc:
            failed = failed or exc.exit_code
            print(f"cove: error: {exc.message}", file=sys.stderr)
    if out or not failed:
        emit(out, args.format, lambda items: print(json.dumps(list(items), indent=2)))
    return failed


def _rm(args: argparse.Namespace, client: AgentClient) -> int:
    force = {"force": "1"} if args.force else None
    return each(args.names, lambda n: client.request("DELETE", _path(n), params=force))


def _prune(args: argparse.Namespace, client: AgentClient) -> int:
    which = "all local volumes" if args.all else "anonymous local volumes"
    if not args.force and not confirm(
        f"WARNING! This will remove {which} not used by at least one container, and their data."
    ):
        print("nothing removed (answer 'y' or give -f)", file=sys.stderr)
        return 1
    removed = client.request("POST", "/api/volumes/prune" + ("?all=1" if args.all else ""))[
        "removed"
    ]
    if removed:
        print("Deleted Volumes:")
    for name in removed:
        print(name)
    return 0
