"""`cove service ...`, `cove kv ...` and `cove members`: the registry through
the agent's Consul-compatible /v1 endpoints over its socket."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cove.cli import nodes as nodes_cli
from cove.cli.client import AgentClient
from cove.cli.output import print_table
from cove.errors import CoveError, InvalidArgument, NotFound


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    svc = sub.add_parser("service", help="services in the registry")
    ssub = svc.add_subparsers(dest="service_cmd", required=True, metavar="COMMAND")
    p = ssub.add_parser("ls", help="list services and their health")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_service_ls)
    p = ssub.add_parser("inspect", help="show a service's instances and checks as JSON")
    p.add_argument("name")
    p.set_defaults(func=_service_inspect)
    p = ssub.add_parser("register", help="register a service (Consul's JSON) on this agent")
    p.add_argument("-f", "--file", required=True, help="JSON file, or - for stdin")
    p.add_argument("--replace-existing-checks", action="store_true")
    p.set_defaults(func=_service_register)
    p = ssub.add_parser("deregister", help="remove a service instance of this agent")
    p.add_argument("id")
    p.set_defaults(func=_service_deregister)
    p = ssub.add_parser(
        "add",
        help="register a container as an instance of a service, on its address, with a TCP"
        " check; it follows the container and goes when the container goes",
    )
    p.add_argument("name", metavar="SERVICE")
    p.add_argument("--container", required=True, help="name, ID or unique ID prefix")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tag", action="append", default=[], metavar="TAG")
    p.set_defaults(func=_service_add)
    p = ssub.add_parser("rm", help="undo 'service add': the container is no longer an instance")
    p.add_argument("name", metavar="SERVICE")
    p.add_argument("--container", required=True, help="name, ID or unique ID prefix")
    p.set_defaults(func=_service_rm)

    kv = sub.add_parser("kv", help="the key/value store")
    ksub = kv.add_subparsers(dest="kv_cmd", required=True, metavar="COMMAND")
    p = ksub.add_parser("get", help="print a key's value")
    p.add_argument("key")
    p.add_argument("--recurse", action="store_true", help="every key under the prefix, as JSON")
    p.add_argument("--detailed", action="store_true", help="the entry with its indexes, as JSON")
    p.set_defaults(func=_kv_get)
    p = ksub.add_parser("put", help="write a key")
    p.add_argument("key")
    p.add_argument("value", help="the value, or - for stdin")
    p.add_argument("--flags", type=int, default=None)
    p.add_argument("--cas", type=int, default=None, help="only if the key's ModifyIndex is this")
    p.set_defaults(func=_kv_put)
    p = ksub.add_parser("rm", help="delete a key")
    p.add_argument("key")
    p.add_argument("--recurse", action="store_true", help="every key under the prefix")
    p.set_defaults(func=_kv_rm)
    p = ksub.add_parser("ls", help="list keys under a prefix")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--separator", default="", help='group keys at this separator (e.g. "/")')
    p.set_defaults(func=_kv_ls)

    p = sub.add_parser("members", help="the agents (nodes) of the cluster")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_members)
    msub = p.add_subparsers(dest="members_cmd", required=False, metavar="COMMAND")
    nodes_cli.add_rm(msub.add_parser("rm", help="remove a dead node and everything it owned"))


def _get(client: AgentClient, path: str, params: dict[str, str] | None = None) -> Any:
    """GET that turns Consul's bare 404 into ``NotFound``."""
    status, body = client.request_raw("GET", path, params=params)
    if status == 404:
        raise NotFound(f"not found: {path.removeprefix('/v1/')}")
    if status >= 400:
        err = CoveError(body.decode(errors="replace").strip() or f"HTTP {status}")
        err.http_status = status
        raise err
    return json.loads(body) if body else None


def _service_ls(args: argparse.Namespace, client: AgentClient) -> int:
    services: dict[str, list[str]] = _get(client, "/v1/catalog/services")
    rows = []
    for name in sorted(services):
        entries = _get(client, f"/v1/health/service/{quote(name, safe='')}")
        passing = sum(all(c["Status"] == "passing" for c in e["Checks"]) for e in entries)
        rows.append((name, f"{passing}/{len(entries)}", ",".join(services[name])))
    if args.format == "json":
        out = [{"name": n, "passing": p, "tags": t.split(",") if t else []} for n, p, t in rows]
        print(json.dumps(out, indent=2))
    else:
        print_table(("NAME", "PASSING", "TAGS"), rows)
    return 0


def _service_inspect(args: argparse.Namespace, client: AgentClient) -> int:
    entries = _get(client, f"/v1/health/service/{quote(args.name, safe='')}")
    if not entries:
        raise NotFound(f"no service named {args.name!r}")
    print(json.dumps(entries, indent=2))
    return 0


def _service_register(args: argparse.Namespace, client: AgentClient) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{args.file}: not valid JSON: {exc}") from exc
    params = {"replace-existing-checks": "true"} if args.replace_existing_checks else None
    client.request("PUT", "/v1/agent/service/register", body, params=params)
    name = body.get("ID") or body.get("Name") if isinstance(body, dict) else None
    print(name or "registered")
    return 0


def _service_deregister(args: argparse.Namespace, client: AgentClient) -> int:
    client.request("PUT", f"/v1/agent/service/deregister/{quote(args.id, safe='')}")
    print(args.id)
    return 0


def _service_add(args: argparse.Namespace, client: AgentClient) -> int:
    if not 0 < args.port < 65536:
        raise InvalidArgument(f"--port {args.port} is out of range (1-65535)")
    text = f"{args.name}:{args.port}" + (f":{','.join(args.tag)}" if args.tag else "")
    ref = quote(args.container, safe="")
    c = client.request("POST", f"/api/containers/{ref}/services", {"service": text})
    print(f"{args.name.lower()} on {c['name']}")
    return 0


def _service_rm(args: argparse.Namespace, client: AgentClient) -> int:
    ref = quote(args.container, safe="")
    c = client.request("DELETE", f"/api/containers/{ref}/services/{quote(args.name, safe='')}")
    print(f"{args.name.lower()} off {c['name']}")
    return 0


def _kv_path(key: str) -> str:
    return "/v1/kv/" + quote(key, safe="/")


def _kv_get(args: argparse.Namespace, client: AgentClient) -> int:
    if args.recurse:
        entries = _get(client, _kv_path(args.key), {"recurse": "true"})
        out = [{**e, "Value": _decode(e.get("Value"))} for e in entries]
        print(json.dumps(out, indent=2))
        return 0
    entries = _get(client, _kv_path(args.key))
    entry = entries[0]
    if args.detailed:
        print(json.dumps({**entry, "Value": _decode(entry.get("Value"))}, indent=2))
        return 0
    raw = base64.b64decode(entry["Value"]) if entry.get("Value") else b""
    sys.stdout.buffer.write(raw)
    if raw and not raw.endswith(b"\n") and sys.stdout.isatty():
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0


def _decode(value: str | None) -> str | None:
    if value is None:
        return None
    return base64.b64decode(value).decode(errors="replace")


def _kv_put(args: argparse.Namespace, client: AgentClient) -> int:
    value = sys.stdin.buffer.read() if args.value == "-" else args.value.encode()
    params: dict[str, str] = {}
    if args.flags is not None:
        params["flags"] = str(args.flags)
    if args.cas is not None:
        params["cas"] = str(args.cas)
    ok = client.request("PUT", _kv_path(args.key), params=params or None, raw=value)
    if ok is not True:
        print(f"cove: error: {args.key}: the CAS index did not match", file=sys.stderr)
        return 5
    print(f"Success! Data written to: {args.key}")
    return 0


def _kv_rm(args: argparse.Namespace, client: AgentClient) -> int:
    params = {"recurse": "true"} if args.recurse else None
    client.request("DELETE", _kv_path(args.key), params=params)
    print(f"Success! Deleted key{'s under' if args.recurse else ''}: {args.key}")
    return 0


def _kv_ls(args: argparse.Namespace, client: AgentClient) -> int:
    params = {"keys": "true"}
    if args.separator:
        params["separator"] = args.separator
    try:
        keys = _get(client, _kv_path(args.prefix), params)
    except NotFound:
        keys = []
    for key in keys:
        print(key)
    return 0


def _members(args: argparse.Namespace, client: AgentClient) -> int:
    # A cove agent: its nodes (cove.cluster.nodes), with container counts;
    # a bare Consul API (no /api): the Consul members.
    code, body = client.request_raw("GET", "/api/members")
    if code == 200:
        nodes = json.loads(body)
        if args.format == "json":
            print(json.dumps(nodes, indent=2))
            return 0
        print_table(
            ("NODE", "ADDRESS", "STATUS", "CONTAINERS", "VERSION"),
            [
                (m["name"], m["advertise"], m["status"], m["containers"], m["version"])
                for m in nodes
            ],
        )
        return 0
    members = client.request("GET", "/v1/agent/members")
    if args.format == "json":
        print(json.dumps(members, indent=2))
        return 0
    status = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}
    rows = [
        (m["Name"], m["Addr"], status.get(m["Status"], str(m["Status"])), m["Tags"].get("dc", ""))
        for m in members
    ]
    print_table(("NODE", "ADDRESS", "STATUS", "DC"), rows)
    return 0
