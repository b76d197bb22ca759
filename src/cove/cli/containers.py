"""`cove run|ps|inspect|logs|exec|stop|start|rm` and `cove network
connect|disconnect`.

``exec`` asks the agent for the container's init pid, environment and
restrictions, then enters the container itself (``runtime.enter``), so the
user's terminal (``-t``) and stdin (``-i``) reach the command directly, with
no relay in between, and the command is confined as the container is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from cove.cli.client import AgentClient, _UnixConnection
from cove.cli.output import print_table
from cove.errors import Conflict, CoveError, InvalidArgument, Unavailable
from cove.runtime import enter
from cove.runtime.security import DEFAULT_CAPS
from cove.runtime.view import status_text


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a command in a new container")
    p.add_argument("-d", "--detach", action="store_true", help="print the id and return")
    p.add_argument("--name", default="")
    p.add_argument("--network", action="append", default=[], metavar="NET")
    p.add_argument("--ip", default="")
    p.add_argument("--ip6", default="")
    p.add_argument("--alias", action="append", default=[], metavar="A")
    p.add_argument("--hostname", default="")
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:]HPORT:PORT[/udp]",
        help="publish on every host address (IPv4, and IPv6 on an --ipv6 network) or on IP;"
        " an IPv6 IP in brackets: [2001:db8::1]:8080:80",
    )
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--rootfs", default="")
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("--restart", default="no", choices=("no", "on-failure", "always"))
    p.add_argument("--service", action="append", default=[], metavar="NAME:PORT")
    p.add_argument(
        "--cap-add", action="append", default=[], metavar="CAP",
        help="add a capability to Docker's default set (NET_ADMIN, CAP_SYS_TIME, ALL)",
    )  # fmt: skip
    p.add_argument(
        "--cap-drop", action="append", default=[], metavar="CAP",
        help="drop a capability from the default set (NET_RAW, ALL)",
    )  # fmt: skip
    p.add_argument(
        "--security-opt", action="append", default=[], metavar="seccomp=unconfined",
        help="seccomp=unconfined turns the default system call filter off",
    )  # fmt: skip
    add_fs_flags(p)
    p.add_argument(
        "command", nargs=argparse.REMAINDER, help="IMAGE [CMD ARGS...] or -- CMD ARGS..."
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_ps)

    p = sub.add_parser("inspect", help="show containers as JSON")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("logs", help="print a container's output")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("name")
    p.set_defaults(func=_logs)

    p = sub.add_parser("exec", help="run a command inside a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="use the terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_exec)

    p = sub.add_parser("stop", help="stop containers (SIGTERM, then SIGKILL)")
    p.add_argument("-t", "--time", type=float, default=10.0, help="seconds before SIGKILL")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=_stop)

    p = sub.add_parser("start", help="start stopped containers")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=_start)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill running containers first")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=_rm)


def add_network_parsers(nsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``connect`` and ``disconnect``, for the ``cove network`` subcommand."""
    p = nsub.add_parser("connect", help="attach a running container to a network")
    p.add_argument("network")
    p.add_argument("container")
    p.add_argument("--alias", action="append", default=[], metavar="A")
    p.add_argument("--ip", default="")
    p.set_defaults(func=_connect)

    p = nsub.add_parser("disconnect", help="detach a container from a network")
    p.add_argument("network")
    p.add_argument("container")
    p.set_defaults(func=_disconnect)


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise InvalidArgument("no command given: cove run [OPTIONS] -- CMD ARGS...")
    return cmd


def add_fs_flags(p: argparse.ArgumentParser) -> None:
    """``IMAGE`` and the filesystem flags of ``run``, as Docker has them."""
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CONTAINER[:ro]")
    p.add_argument(
        "--mount", action="append", default=[], metavar="type=bind|tmpfs,source=..,target=..",
    )  # fmt: skip
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:size=64m]")
    p.add_argument("--read-only", action="store_true", help="the container's root read-only")


def _image_and_command(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``IMAGE [CMD...]`` or, with no image, ``-- CMD...`` (light mode)."""
    cmd = list(args.command)
    if cmd and cmd[0] != "--" and not args.rootfs:
        return cmd[0], cmd[1:]
    return "", _command(args)


def _run(args: argparse.Namespace, client: AgentClient) -> int:
    rootfs = str(Path(args.rootfs).resolve()) if args.rootfs else ""
    image, command = _image_and_command(args)
    try:
        info = _create(args, client, rootfs, image, command)
    except CoveError as exc:
        if not exc.details.keys() & {"image", "mount"}:
            raise
        print(f"cove: error: {exc.message}", file=sys.stderr)
        return 125  # as docker run, for what stops the container being made
    if args.detach:
        print(info["name"])
        return 0
    _stream_logs(client, info["name"], follow=True)
    final = client.request("GET", f"/api/containers/{quote(info['name'])}")
    code = final["state"].get("exit_code")
    return int(code) if isinstance(code, int) and code >= 0 else 0


def _create(
    args: argparse.Namespace, client: AgentClient, rootfs: str, image: str, command: list[str]
) -> Any:
    body = {
        "image": image,
        "volumes": args.volume,
        "mount": args.mount,
        "tmpfs": args.tmpfs,
        "read_only": args.read_only,
        "name": args.name,
        "command": command,
        "networks": args.network,
        "ip": args.ip,
        "ip6": args.ip6,
        "aliases": args.alias,
        "hostname": args.hostname,
        "ports": args.publish,
        "env": args.env,
        "labels": args.label,
        "rootfs": rootfs,
        "workdir": args.workdir,
        "restart": args.restart,
        "services": args.service,
        "cap_add": args.cap_add,
        "cap_drop": args.cap_drop,
        "security_opt": args.security_opt,
    }
    return client.request("POST", "/api/containers", body)


def _ps(args: argparse.Namespace, client: AgentClient) -> int:
    items: list[dict[str, Any]] = client.request(
        "GET", "/api/containers", params={"all": "1"} if args.all else None
    )
    if args.format == "json":
        print(json.dumps(items, indent=2))
        return 0
    if args.quiet:
        for c in items:
            print(c["name"])
        return 0
    rows = []
    for c in items:
        addrs = ",".join(f"{net}:{ep['ipv4'] or ep['ipv6']}" for net, ep in c["endpoints"].items())
        rows.append(
            (c["short_id"], c["name"], status_text(c["state"]), addrs, ",".join(c["ports"]),
             " ".join(c["argv"])[:40], c.get("node", ""))
        )  # fmt: skip
    print_table(("ID", "NAME", "STATUS", "NETWORKS", "PORTS", "COMMAND", "NODE"), rows)
    return 0


def _inspect(args: argparse.Namespace, client: AgentClient) -> int:
    out = [client.request("GET", f"/api/containers/{quote(n)}") for n in args.names]
    print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    return 0


def _logs(args: argparse.Namespace, client: AgentClient) -> int:
    _stream_logs(client, args.name, follow=args.follow)
    return 0


def _stream_logs(client: AgentClient, name: str, follow: bool) -> None:
    query = urlencode({"follow": "1"} if follow else {})
    conn = _UnixConnection(str(client.socket_path), timeout=None)  # type: ignore[arg-type]
    try:
        conn.request("GET", f"/api/containers/{quote(name)}/logs?{query}")
        resp = conn.getresponse()
        if resp.status >= 400:
            client.request("GET", f"/api/containers/{quote(name)}/logs")  # raises the error
            return
        out = sys.stdout.buffer
        while chunk := resp.read1(65536):
            out.write(chunk)
            out.flush()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unavailable(f"cannot reach the cove agent at {client.socket_path}") from exc
    finally:
        conn.close()


def _exec(args: argparse.Namespace, client: AgentClient) -> int:
    cmd = _command(args)
    info = client.request("GET", f"/api/containers/{quote(args.name)}/exec")
    env = dict(info["env"])
    env.update(kv.split("=", 1) for kv in args.env if "=" in kv)
    if args.tty and "TERM" in os.environ:
        env.setdefault("TERM", os.environ["TERM"])
    if not args.interactive:
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    caps = frozenset(str(c) for c in info.get("capabilities", DEFAULT_CAPS))
    try:
        return enter.run(
            int(info["pid"]), cmd, env, str(info.get("workdir") or "/"), caps,
            bool(info.get("seccomp", True)),
        )  # fmt: skip
    except OSError as exc:
        raise Conflict(f"cannot enter container {args.name}: {exc.strerror or exc}") from exc


def _stop(args: argparse.Namespace, client: AgentClient) -> int:
    for name in args.names:
        client.request(
            "POST", f"/api/containers/{quote(name)}/stop", params={"timeout": str(args.time)}
        )
        print(name)
    return 0


def _start(args: argparse.Namespace, client: AgentClient) -> int:
    for name in args.names:
        client.request("POST", f"/api/containers/{quote(name)}/start")
        print(name)
    return 0


def _rm(args: argparse.Namespace, client: AgentClient) -> int:
    for name in args.names:
        params = {"force": "1"} if args.force else None
        client.request("DELETE", f"/api/containers/{quote(name)}", params=params)
        print(name)
    return 0


def _connect(args: argparse.Namespace, client: AgentClient) -> int:
    body = {"container": args.container, "aliases": args.alias, "ip": args.ip}
    client.request("POST", f"/api/networks/{quote(args.network)}/connect", body)
    return 0


def _disconnect(args: argparse.Namespace, client: AgentClient) -> int:
    body = {"container": args.container}
    client.request("POST", f"/api/networks/{quote(args.network)}/disconnect", body)
    return 0
