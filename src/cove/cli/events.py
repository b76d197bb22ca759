"""`cove events`: changes to containers, networks, services, checks, KV,
policy and VIPs as they happen (Docker's ``docker events``), from the agent's
event stream (``GET /api/events``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any, TypeAlias
from urllib.parse import urlencode

from cove.cli.client import AgentClient
from cove.errors import InvalidArgument, Unavailable, from_json

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: SubParsers) -> None:
    p = sub.add_parser(
        "events",
        help="stream changes: containers, networks, services, checks, KV, policy, VIPs",
        description="Print each change as it happens. Every event carries the store index "
        "it happened at; pass the last one seen to --since to resume without a gap.",
    )
    p.add_argument(
        "--filter",
        "-f",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep matching events: type=container|network|endpoint|service|check|node|kv|"
        "policy|vip, action=create|update|delete, name=..., or an attribute "
        "(status=critical, service=web, network=vnet); repeat a key for OR",
    )
    p.add_argument(
        "--since",
        type=int,
        default=None,
        metavar="INDEX",
        help="start after this index (0: all the history the agent still has)",
    )
    p.add_argument(
        "--format", choices=("text", "json"), default="text", help="json: one object a line"
    )
    p.add_argument(
        "--no-stream",
        action="store_true",
        help="print the events after --since and exit instead of following",
    )
    p.set_defaults(func=_events)


def _query(args: argparse.Namespace, stream: bool) -> str:
    params: list[tuple[str, str]] = [("filter", f) for f in args.filter]
    if args.since is not None:
        params.append(("since", str(args.since)))
    if not stream:
        params.append(("stream", "0"))
    return urlencode(params)


def _events(args: argparse.Namespace, client: AgentClient) -> int:
    for f in args.filter:
        if "=" not in f:
            raise InvalidArgument(f"--filter {f!r} is not KEY=VALUE (e.g. type=container)")
    if args.no_stream:
        answer = client.request("GET", f"/api/events?{_query(args, False)}")
        for event in answer["events"]:
            _print(event, args.format)
        return 0
    for event in _follow(client, _query(args, True)):
        _print(event, args.format)
    return 0


def _follow(client: AgentClient, query: str) -> Iterator[dict[str, Any]]:
    conn = client._connection()
    try:
        headers = {"X-Consul-Token": client.token} if client.token else {}
        conn.request("GET", f"/api/events?{query}", headers=headers)
        resp = conn.getresponse()
        if resp.status >= 400:
            body = resp.read()
            try:
                raise from_json(json.loads(body))
            except (ValueError, KeyError, TypeError):
                raise Unavailable(f"the agent answered HTTP {resp.status}") from None
        for line in resp:
            line = line.strip()
            if line:  # blank lines are the stream's heartbeats
                yield json.loads(line)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unavailable(
            f"cannot reach the cove agent at {client.where}: is `cove agent` running?"
        ) from exc
    finally:
        conn.close()


def _print(event: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    else:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(event["attributes"].items()) if v)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sys.stdout.write(
            f"{stamp} [{event['index']}] {event['type']} {event['action']} "
            f"{event['name']}{f' ({attrs})' if attrs else ''}\n"
        )
    sys.stdout.flush()
