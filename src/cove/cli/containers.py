"""`cove run|ps|inspect|logs|exec|stop|start|rm` and `cove network
connect|disconnect`.

``exec`` asks the agent for the container's init pid, environment and
restrictions, then enters the container itself (``runtime.enter``), so the
user's terminal (``-t``) and stdin (``-i``) reach the command directly, with
no relay in between, and the command is confined as the container is.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from cove.cli.client import AgentClient, _UnixConnection
from cove.cli.output import emit, print_table
from cove.errors import Conflict, CoveError, InvalidArgument, NotFound, Unavailable
from cove.timefmt import parse_time_ns

# cove.runtime.enter, .security and .view are imported where used: `cove
# run` and `rm` need none of them, and their imports cost more than the rest.


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a command in a new container")
    p.add_argument("-d", "--detach", action="store_true", help="print the id and return")
    p.add_argument("--name", default="")
    p.add_argument(
        "--network", action="append", default=[], metavar="NET",
        help="a network to join (repeat for more; default: bridge); 'none': loopback only;"
        " 'host': the host's network namespace, no address or DNS name of its own",
    )  # fmt: skip
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
        " an IPv6 IP in brackets: [2001:db8::1]:8080:80; ranges: 8000-8002:8000-8002;"
        " PORT alone: on a free host port",
    )
    p.add_argument(
        "-e", "--env", action="append", default=[], metavar="K[=V]",
        help="set K to V, or pass K from this environment (left unset if it is not set)",
    )  # fmt: skip
    p.add_argument(
        "--env-file", action="append", default=[], metavar="FILE",
        help="read K=V (or K, from this environment) lines; '#' starts a comment",
    )  # fmt: skip
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument(
        "-P", "--publish-all", action="store_true",
        help="publish every --expose port on a free host port",
    )  # fmt: skip
    p.add_argument(
        "--expose", action="append", default=[], metavar="PORT[/udp]",
        help="a port the container serves (what -P publishes)",
    )  # fmt: skip
    p.add_argument(
        "--add-host", action="append", default=[], metavar="NAME:IP",
        help="a line of the container's /etc/hosts (IP may be host-gateway)",
    )  # fmt: skip
    p.add_argument(
        "--dns", action="append", default=[], metavar="IP",
        help="a DNS server of the container's /etc/resolv.conf (instead of cove's)",
    )  # fmt: skip
    p.add_argument(
        "--dns-search", action="append", default=[], metavar="DOMAIN",
        help="a search domain of the container's /etc/resolv.conf ('.' for none)",
    )  # fmt: skip
    p.add_argument(
        "--dns-option", action="append", default=[], metavar="OPT",
        help="an option of the container's /etc/resolv.conf (e.g. ndots:2)",
    )  # fmt: skip
    p.add_argument(
        "-m", "--memory", default="", metavar="SIZE",
        help="memory limit (b, k, m, g); over it the kernel kills the container (exit 137)",
    )  # fmt: skip
    p.add_argument(
        "--cpus", default="", metavar="N",
        help="CPU limit, in CPUs (e.g. 0.5)",
    )  # fmt: skip
    p.add_argument(
        "--init", action="store_true",
        help="run the command under a tiny init (tini) that reaps zombies and forwards signals",
    )  # fmt: skip
    p.add_argument(
        "--stop-signal", default="SIGTERM", metavar="SIGNAL",
        help="what 'cove stop' sends first (SIGKILL follows after its timeout)",
    )  # fmt: skip
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--rootfs", default="")
    p.add_argument("-w", "--workdir", default="")
    p.add_argument(
        "--entrypoint", default="", metavar="PROGRAM",
        help="the program to run; the command's words become its arguments",
    )  # fmt: skip
    p.add_argument("-u", "--user", default="", metavar="USER[:GROUP]", help="name or number")
    p.add_argument(
        "--restart", default="no", metavar="POLICY",
        help="no, on-failure[:N], always or unless-stopped",
    )  # fmt: skip
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
    add_tty_flags(p)
    p.add_argument(
        "command", nargs=argparse.REMAINDER, help="IMAGE [CMD ARGS...] or -- CMD ARGS..."
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "attach", help="connect this terminal to a running container's terminal or stdin"
    )
    p.add_argument("--no-stdin", action="store_true", help="do not forward this stdin")
    p.add_argument("name", metavar="CONTAINER")
    p.set_defaults(func=_attach)

    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    p.add_argument("-q", "--quiet", action="store_true", help="IDs only")
    p.add_argument(
        "-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
        help="name=, id=, label=K[=V], status=, network= (repeat: all must hold;"
        " the same key twice: either)",
    )  # fmt: skip
    p.add_argument("-n", "--last", type=int, default=-1, metavar="N",
                   help="the N last created (stopped ones too)")  # fmt: skip
    p.add_argument("-l", "--latest", action="store_true", help="the last created only")
    p.add_argument("--no-trunc", action="store_true", help="full IDs and commands")
    p.add_argument("--format", default="table", help=_FORMAT_HELP)
    p.set_defaults(func=_ps)

    p = sub.add_parser("inspect", help="show containers as JSON (always a list)")
    p.add_argument("-f", "--format", default="json", help=_FORMAT_HELP)
    p.add_argument("names", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("logs", help="print a container's output")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", default="all", metavar="N", help="the last N lines (or all)")
    p.add_argument("-t", "--timestamps", action="store_true",
                   help="each line's time (RFC 3339, nanoseconds) in front of it")  # fmt: skip
    p.add_argument("--since", default="", metavar="TIME",
                   help="from TIME on: 2026-12-06T15:04:05Z, Unix seconds, 10m (ago)")  # fmt: skip
    p.add_argument("--until", default="", metavar="TIME",
                   help="lines up to TIME (the same forms as --since)")  # fmt: skip
    p.add_argument("name", metavar="CONTAINER")
    p.set_defaults(func=_logs)

    p = sub.add_parser("exec", help="run a command inside a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="use the terminal")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("-w", "--workdir", default="", help="working directory inside the container")
    p.add_argument("-u", "--user", default="", metavar="USER[:GROUP]", help="name or number")
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
    p.add_argument(
        "-v", "--volumes", action="store_true",
        help="remove their anonymous volumes too (-v /path, the image's VOLUMEs; not named ones)",
    )  # fmt: skip
    p.add_argument("names", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_rm)


_FORMAT_HELP = "table, json, or a template: '{{.Name}} {{.State.Status}}', '{{json .Labels}}'"


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
    if not cmd and not getattr(args, "entrypoint", ""):
        raise InvalidArgument("no command given: cove run [OPTIONS] -- CMD ARGS...")
    return cmd


def add_fs_flags(p: argparse.ArgumentParser) -> None:
    """``IMAGE`` and the filesystem flags of ``run``, as Docker has them."""
    p.add_argument(
        "-v", "--volume", action="append", default=[], metavar="HOST:CONTAINER[:ro]",
        help="bind an absolute host path (made if missing) or a named volume"
        " (NAME:CONTAINER: made on first use, kept after rm; see 'cove volume');"
        " -v /CONTAINER alone: an anonymous volume (removed by rm -v and run --rm)",
    )  # fmt: skip
    p.add_argument(
        "--mount", action="append", default=[],
        metavar="type=bind|volume|tmpfs,source=..,target=..",
    )  # fmt: skip
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:size=64m]")
    p.add_argument(
        "--read-only", action="store_true",
        help="the container's root read-only (without an image: /tmp, /run, /var/tmp and"
        " /root too); --tmpfs and volumes stay writable",
    )  # fmt: skip


def add_tty_flags(p: argparse.ArgumentParser) -> None:
    """``-i`` and ``-t`` of ``run``, as Docker has them."""
    p.add_argument(
        "-i", "--interactive", action="store_true",
        help="keep the container's stdin open and forward this one to it",
    )  # fmt: skip
    p.add_argument(
        "-t", "--tty", action="store_true",
        help="give the container a terminal (of this one's size; raw mode while attached)",
    )  # fmt: skip


def _image_and_command(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``IMAGE [CMD...]`` or, with no image, ``-- CMD...`` (light mode)."""
    cmd = list(args.command)
    if cmd and cmd[0] != "--" and not args.rootfs:
        return cmd[0], cmd[1:]
    return "", _command(args)


def _run(args: argparse.Namespace, client: AgentClient) -> int:
    rootfs = str(Path(args.rootfs).resolve()) if args.rootfs else ""
    image, command = _image_and_command(args)
    if args.rm and args.restart != "no":
        raise InvalidArgument("--rm and --restart cannot go together: choose one")
    if "host" in args.network and (args.publish or args.publish_all):
        print("WARNING: Published ports are discarded when using host network mode",
              file=sys.stderr)  # fmt: skip
    if (args.tty or args.interactive) and not args.detach:
        _need_local(client, "run -i/-t")
    try:
        info = _create(args, client, rootfs, image, command)
    except CoveError as exc:
        launch = _LAUNCH_EXIT.get(str(exc.details.get("launch")))
        if launch is None and not exc.details.keys() & {"image", "mount"}:
            raise
        print(f"cove: error: {exc.message}", file=sys.stderr)
        # as docker run: 125 for what stops the container being made, 127
        # for a command not found, 126 for one that cannot be run
        return launch or 125
    if args.detach:
        print(info["id"])
        return 0
    cid = info["id"]
    detached = False
    try:
        if args.tty or args.interactive:
            status = _attached(client, cid, args.interactive, tail="all")
            detached = status is None  # the agent removes it on exit (--rm)
            return status or 0
        _stream_logs(client, cid, follow=True)
        final = client.request("GET", f"/api/containers/{cid}")
    finally:
        if args.rm and not detached:
            with contextlib.suppress(NotFound):  # the agent may have been first
                client.request(  # with its anonymous volumes, as docker run --rm
                    "DELETE", f"/api/containers/{cid}", params={"force": "1", "volumes": "1"}
                )
    code = final["state"].get("exit_code")
    return int(code) if isinstance(code, int) and code >= 0 else 0


_LAUNCH_EXIT = {"not_found": 127, "cannot_run": 126}


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
        "env": env_args(args.env_file, args.env, os.environ),
        "labels": args.label,
        "rootfs": rootfs,
        "workdir": args.workdir,
        "restart": args.restart,
        "services": args.service,
        "cap_add": args.cap_add,
        "cap_drop": args.cap_drop,
        "security_opt": args.security_opt,
        "init": args.init,
        "expose": args.expose,
        "publish_all": args.publish_all,
        "add_hosts": args.add_host,
        "dns": args.dns,
        "dns_search": args.dns_search,
        "dns_options": args.dns_option,
        "memory": args.memory,
        "cpus": args.cpus,
        "user": args.user,
        "entrypoint": args.entrypoint,
        "stop_signal": args.stop_signal,
        "tty": args.tty,
        "interactive": args.interactive,
    }
    if args.tty:
        from cove.runtime import attach

        body["console_size"] = attach.terminal_size(0, 1)
    # Detached, the agent removes it when it exits; attached, this command
    # does once it has the exit status (-t: which the supervisor tells it,
    # so the agent may remove it too, as it must after a detach).
    body["auto_remove"] = args.rm and (args.detach or args.tty)
    return client.request("POST", "/api/containers", body)


def env_args(files: list[str], items: list[str], environ: Mapping[str, str]) -> list[str]:
    """``--env-file`` lines then ``-e`` items as ``K=V``: a bare ``K`` takes
    its value from ``environ`` and is left out when unset, as Docker does."""
    out: list[str] = []
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidArgument(
                f"cannot read --env-file {path}: {exc.strerror or exc}", path=path
            ) from exc
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key = line.partition("=")[0]
            if not key or any(c.isspace() for c in key):
                raise InvalidArgument(f"{path} line {n}: {line[:40]!r} is not KEY=VALUE or KEY")
            out.extend(_env_item(line, environ))
    for item in items:
        out.extend(_env_item(item, environ))
    return out


def _env_item(item: str, environ: Mapping[str, str]) -> list[str]:
    if "=" in item:
        return [item]
    if not item:
        raise InvalidArgument("an empty -e: give KEY=VALUE or KEY")
    return [f"{item}={environ[item]}"] if item in environ else []


def _ps(args: argparse.Namespace, client: AgentClient) -> int:
    every = args.all or args.last >= 0 or args.latest
    items: list[dict[str, Any]] = client.request(
        "GET", "/api/containers", params={"all": "1"} if every else None
    )
    items = select(items, parse_filters(args.filter))
    if args.latest or args.last >= 0:
        items.sort(key=lambda c: (c["created"], c["id"]), reverse=True)
        items = items[: 1 if args.latest else args.last]
    if args.quiet:
        for c in items:
            print(c["id"] if args.no_trunc else c["short_id"])
        return 0
    emit(items, args.format, lambda rows: _ps_table(rows, args.no_trunc))
    return 0


def _ps_table(items: Sequence[Mapping[str, Any]], no_trunc: bool) -> None:
    from cove.runtime.view import status_text

    rows = []
    for c in items:
        addrs = ",".join(f"{net}:{ep['ipv4'] or ep['ipv6']}" for net, ep in c["endpoints"].items())
        if c.get("network_mode") == "host":
            addrs = "host"
        command = " ".join(c["argv"])
        rows.append(
            (c["id"] if no_trunc else c["short_id"], c["name"], status_text(c["state"]), addrs,
             ",".join(c["ports"]), command if no_trunc else command[:40], c.get("node", ""))
        )  # fmt: skip
    print_table(("ID", "NAME", "STATUS", "NETWORKS", "PORTS", "COMMAND", "NODE"), rows)


_PS_FILTERS = ("id", "name", "label", "status", "network")


def parse_filters(items: Sequence[str]) -> dict[str, list[str]]:
    """``--filter KEY=VALUE`` items by key; ``InvalidArgument`` naming the
    keys ``ps`` knows."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in _PS_FILTERS:
            raise InvalidArgument(
                f"invalid filter {item!r}: use {', '.join(k + '=' for k in _PS_FILTERS)}"
            )
        out.setdefault(key, []).append(value)
    return out


def select(items: list[dict[str, Any]], filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """The containers every filter key accepts (any of its values), as
    Docker's ``ps --filter``: ``name`` matches a part of the name, ``id`` a
    prefix, ``label`` ``K`` or ``K=V``, ``status`` the state, ``network``
    a network's name or ID prefix."""

    def one(c: Mapping[str, Any], key: str, value: str) -> bool:
        if key == "name":
            return value in c["name"]
        if key == "id":
            return bool(value) and str(c["id"]).startswith(value.lower())
        if key == "label":
            k, has_v, v = value.partition("=")
            return k in c["labels"] and (not has_v or c["labels"][k] == v)
        if key == "status":
            return bool(c["state"]["status"] == value)
        return value in c["endpoints"] or value in c["networks"] or c.get("network_mode") == value

    return [c for c in items if all(any(one(c, k, v) for v in vs) for k, vs in filters.items())]


def _inspect(args: argparse.Namespace, client: AgentClient) -> int:
    out, failed = [], 0
    for ref in args.names:
        try:
            out.append(client.request("GET", f"/api/containers/{quote(ref, safe='')}"))
        except CoveError as exc:
            failed = failed or exc.exit_code
            print(f"cove: error: {exc.message}", file=sys.stderr)
    if out or not failed:
        emit(out, args.format, lambda items: print(json.dumps(list(items), indent=2)))
    return failed


def _logs(args: argparse.Namespace, client: AgentClient) -> int:
    tail = str(args.tail)
    if tail != "all" and not (tail.isdigit()):
        raise InvalidArgument(f"invalid --tail {tail!r}: a number of lines or 'all'")
    # Relative to this machine's clock and zone, as docker does: the agent
    # gets Unix seconds.
    now = time.time_ns()
    params = {"timestamps": "1"} if args.timestamps else {}
    for flag in ("since", "until"):
        text = getattr(args, flag)
        if text:
            ns = parse_time_ns(text, now, f"--{flag}")
            params[flag] = f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
    _stream_logs(client, args.name, follow=args.follow, tail=tail, params=params)
    return 0


def _stream_logs(
    client: AgentClient,
    name: str,
    follow: bool,
    tail: str = "all",
    params: Mapping[str, str] | None = None,
) -> None:
    """The container's output, its stderr to stderr as docker prints it."""
    query = {"multiplex": "1", **(params or {})}
    if follow:
        query["follow"] = "1"
    if tail != "all":
        query["tail"] = tail
    conn = _UnixConnection(str(client.socket_path), timeout=None)  # type: ignore[arg-type]
    try:
        conn.request("GET", f"/api/containers/{quote(name)}/logs?{urlencode(query)}")
        resp = conn.getresponse()
        if resp.status >= 400:
            client.request("GET", f"/api/containers/{quote(name)}/logs")  # raises the error
            return
        outs = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
        while header := resp.read(8):
            if len(header) < 8:
                break  # the agent went away mid-frame
            size = int.from_bytes(header[4:8], "big")
            out = outs.get(header[0], sys.stdout.buffer)
            while size > 0 and (chunk := resp.read1(min(size, 65536))):
                out.write(chunk)
                size -= len(chunk)
            out.flush()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unavailable(f"cannot reach the cove agent at {client.socket_path}") from exc
    except (http.client.IncompleteRead, ConnectionResetError) as exc:
        raise Unavailable(
            "the cove agent stopped sending the log (restarted?): run the command again"
        ) from exc
    finally:
        conn.close()


def _exec(args: argparse.Namespace, client: AgentClient) -> int:
    from cove.runtime import enter
    from cove.runtime.security import DEFAULT_CAPS

    cmd = _command(args)
    info = client.request("GET", f"/api/containers/{quote(args.name, safe='')}/exec")
    env = dict(info["env"])
    env.update(kv.split("=", 1) for kv in args.env if "=" in kv)
    if args.tty and "TERM" in os.environ:
        env.setdefault("TERM", os.environ["TERM"])
    workdir = args.workdir or str(info.get("workdir") or "/")
    if not workdir.startswith("/"):
        raise InvalidArgument(f"working directory {workdir!r} must be absolute")
    if args.detach and (args.interactive or args.tty):
        raise InvalidArgument("-d cannot go with -i or -t: a detached command has no terminal")
    if not args.interactive or args.detach:
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    caps = frozenset(str(c) for c in info.get("capabilities", DEFAULT_CAPS))
    if args.detach and _detached():
        return 0
    try:
        return enter.run(
            int(info["pid"]), cmd, env, workdir, caps, bool(info.get("seccomp", True)),
            args.user or str(info.get("user") or ""),
        )  # fmt: skip
    except OSError as exc:
        raise Conflict(f"cannot enter container {args.name}: {exc.strerror or exc}") from exc


def _attach(args: argparse.Namespace, client: AgentClient) -> int:
    _need_local(client, "attach")
    c = client.request("GET", f"/api/containers/{quote(args.name, safe='')}")
    if c["state"]["status"] != "running":
        raise Conflict(
            f"container {args.name} is not running: start it with `cove start {args.name}`",
            container=args.name,
        )
    return _attached(client, str(c["id"]), not args.no_stdin, tail="0") or 0


def _attached(client: AgentClient, ref: str, forward_input: bool, tail: str) -> int | None:
    """This terminal (or stdin and output) on container ``ref`` until it
    exits; its exit code, or None when the user detached. Output without a
    terminal comes from its log (``tail`` lines of what is there already,
    then what follows)."""
    from cove.runtime import attach

    info = client.request("GET", f"/api/containers/{quote(ref, safe='')}/attach")
    name = str(info["name"])
    try:
        session = attach.connect(str(info["socket"]), str(info["id"]), backlog=tail != "0")
    except attach.AttachRefused as exc:
        raise Conflict(f"cannot attach to container {name}: {exc.message}") from exc
    except OSError as exc:
        raise Unavailable(
            f"cannot reach the supervisor at {info['socket']}: {exc.strerror or exc}"
        ) from exc
    try:
        if session.tty:
            state = session.relay(0, 1, forward_input and bool(info["interactive"]))
            if state is None:
                print(f"\r\ndetached from {name} (ctrl-p ctrl-q); it goes on", file=sys.stderr)
                return None
        else:
            if session.fd >= 0 and forward_input:
                attach.pump(0, session.fd)
                session.fd = -1  # the pump's now: it closes it at end-of-file
            _stream_logs(client, str(info["id"]), follow=True, tail=tail)
            state = session.wait()
    except attach.AttachRefused as exc:
        raise Unavailable(f"container {name}: {exc.message}") from exc
    finally:
        session.close()
    code = state.get("exit_code")
    return int(code) if isinstance(code, int) and code >= 0 else 0


def _need_local(client: AgentClient, what: str) -> None:
    """``InvalidArgument`` unless ``client`` is on the agent's own socket:
    the terminal is handed over by the supervisor on that host."""
    if client.remote is not None:
        raise InvalidArgument(
            f"{what} needs the agent's local socket (its terminal is handed over on the"
            " agent's host): run it there, or use -d"
        )


def _detached() -> bool:
    """Fork twice; True in the caller (which returns at once), False in the
    grandchild, which runs the command with its output to /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return True
    os.setsid()  # pragma: no cover - the detached side
    if os.fork():  # pragma: no cover
        os._exit(0)
    fd = os.open(os.devnull, os.O_WRONLY)  # pragma: no cover
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return False


def each(
    refs: Sequence[str], act: Callable[[str], object], show: Callable[[str], None] = print
) -> int:
    """``act`` on every ref: what succeeds is printed, each failure reported
    on stderr; the exit code is the first failure's (0 if none failed)."""
    failed = 0
    for ref in refs:
        try:
            act(ref)
        except CoveError as exc:
            failed = failed or exc.exit_code
            print(f"cove: error: {exc.message}", file=sys.stderr)
            continue
        show(ref)
    return failed


def _stop(args: argparse.Namespace, client: AgentClient) -> int:
    params = {"timeout": str(args.time)}
    return each(
        args.names,
        lambda r: client.request(
            "POST", f"/api/containers/{quote(r, safe='')}/stop", params=params
        ),
    )


def _start(args: argparse.Namespace, client: AgentClient) -> int:
    return each(
        args.names, lambda r: client.request("POST", f"/api/containers/{quote(r, safe='')}/start")
    )


def _rm(args: argparse.Namespace, client: AgentClient) -> int:
    params = {"force": "1"} if args.force else {}
    if args.volumes:
        params["volumes"] = "1"
    return each(
        args.names,
        lambda r: client.request("DELETE", f"/api/containers/{quote(r, safe='')}", params=params),
    )


def _connect(args: argparse.Namespace, client: AgentClient) -> int:
    body = {"container": args.container, "aliases": args.alias, "ip": args.ip}
    client.request("POST", f"/api/networks/{quote(args.network)}/connect", body)
    return 0


def _disconnect(args: argparse.Namespace, client: AgentClient) -> int:
    body = {"container": args.container}
    client.request("POST", f"/api/networks/{quote(args.network)}/disconnect", body)
    return 0
