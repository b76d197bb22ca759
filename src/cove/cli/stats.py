"""`cove stats`: each container's traffic per network (bytes and packets in
and out, from the kernel's counters of its veth, with rates between
refreshes) and each health check's status, live in the terminal like
``docker stats``; ``--no-stream`` prints one snapshot."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TypeAlias

from cove.cli.client import AgentClient
from cove.cli.output import print_table
from cove.errors import InvalidArgument

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

_CLEAR = "\033[H\033[2J"


def add_parsers(sub: SubParsers) -> None:
    p = sub.add_parser("stats", help="live traffic per container and health per check")
    p.add_argument("containers", nargs="*", help="only these containers (default: all)")
    p.add_argument("--no-stream", action="store_true", help="print one snapshot and exit")
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_stats)


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


def _key(e: dict[str, Any]) -> tuple[str, str]:
    return (str(e["container"]), str(e["network"]))


def render(
    now: dict[str, Any], before: dict[str, Any] | None, only: list[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """The container rows and the check rows of a snapshot; rates from the
    previous snapshot when there is one."""
    prev = {_key(e): e for e in before["endpoints"]} if before else {}
    span = now["time"] - before["time"] if before else 0.0
    rows = []
    for e in sorted(now["endpoints"], key=_key):
        if only and e["container"] not in only:
            continue
        p = prev.get(_key(e))
        if p is not None and span > 0:
            rate_in = human((e["in_bytes"] - p["in_bytes"]) / span) + "/s"
            rate_out = human((e["out_bytes"] - p["out_bytes"]) / span) + "/s"
        else:
            rate_in = rate_out = "-"
        rows.append(
            [
                e["container"],
                e["network"],
                f"{human(e['in_bytes'])} / {human(e['out_bytes'])}",
                f"{e['in_packets']} / {e['out_packets']}",
                f"{rate_in} / {rate_out}",
                f"{e['in_dropped']} / {e['out_dropped']}",
            ]
        )
    checks = [
        [c["service"] or "(node)", c["service_id"], c["check"], c["node"], c["status"]]
        for c in sorted(now["checks"], key=lambda c: (c["service"], c["service_id"], c["check"]))
    ]
    return rows, checks


def _show(now: dict[str, Any], before: dict[str, Any] | None, only: list[str]) -> None:
    rows, checks = render(now, before, only)
    print_table(["CONTAINER", "NETWORK", "NET I/O", "PACKETS I/O", "RATE I/O", "DROPS I/O"], rows)
    if checks:
        print()
        print_table(["SERVICE", "INSTANCE", "CHECK", "NODE", "STATUS"], checks)


def _stats(args: argparse.Namespace, client: AgentClient) -> int:
    if args.interval <= 0:
        raise InvalidArgument("--interval must be more than 0 seconds")
    before = None
    while True:
        now = client.request("GET", "/api/stats")
        if args.format == "json":
            sys.stdout.write(json.dumps(now) + "\n")
        else:
            if not args.no_stream:
                sys.stdout.write(_CLEAR)
            _show(now, before, args.containers)
        sys.stdout.flush()
        if args.no_stream:
            return 0
        before = now
        time.sleep(args.interval)
