"""`cove cni ...`: install the CNI plugin and its configuration; list the
containers other runtimes attached through it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from cove.agent.config import DEFAULT_SOCKET
from cove.cli.client import AgentClient
from cove.cli.output import print_table
from cove.cni import conflist
from cove.errors import InvalidArgument


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cni = sub.add_parser("cni", help="CNI: podman, containerd and Kubernetes on cove networks")
    csub = cni.add_subparsers(dest="cni_cmd", required=True, metavar="COMMAND")
    p = csub.add_parser(
        "install",
        help="write the cove-cni plugin and one .conflist per cove network",
        description="Write BIN_DIR/cove-cni and CONF_DIR/NN-cove-<network>.conflist for every "
        "network (NN: the network's cni.priority label, default 50; containerd reads only "
        "the first file in its directory). `cove agent --cni-conf-dir` keeps them in step.",
    )
    p.add_argument("--bin-dir", type=Path, default=Path("/usr/lib/cni"), help="plugin directory")
    p.add_argument("--conf-dir", type=Path, default=Path("/etc/cni/net.d"), help="config dir")
    p.add_argument(
        "--cni-version",
        default=conflist.DEFAULT_VERSION,
        choices=("0.4.0", "1.0.0", "1.1.0"),
        help="cniVersion of the conflists (default 1.0.0: podman 4 and containerd 1.x "
        "cannot take 1.1.0)",
    )
    p.add_argument(
        "--python",
        default=shutil.which("python3") or "/usr/bin/python3",
        help="interpreter the plugin runs with (standard library only)",
    )
    p.set_defaults(func=_install)
    p = csub.add_parser("ls", help="list CNI attachments")
    p.add_argument("--network", default="")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_ls)


def _install(args: argparse.Namespace, client: AgentClient) -> int:
    if not args.python or not os.access(args.python, os.X_OK):
        raise InvalidArgument(f"--python {args.python!r} is not an executable interpreter")
    nets = [conflist.from_api(n) for n in client.request("GET", "/api/networks")]
    sock = args.socket or Path(os.environ.get("COVE_SOCKET", str(DEFAULT_SOCKET)))
    try:
        path = conflist.install_plugin(args.bin_dir, args.python)
        written, removed = conflist.sync(args.conf_dir, nets, sock.absolute(), args.cni_version)
    except OSError as exc:
        raise InvalidArgument(f"cannot write the CNI files: {exc}") from exc
    print(path)
    for name in written:
        print(args.conf_dir / name)
    for name in removed:
        print(f"removed {args.conf_dir / name}")
    return 0


def _ls(args: argparse.Namespace, client: AgentClient) -> int:
    query = f"?node=*&network={args.network}" if args.network else "?node=*"
    atts = client.request("GET", f"/api/cni/attachments{query}")
    if args.format == "json":
        print(json.dumps(atts, indent=2))
        return 0
    rows = [
        [
            a["container_id"][:12],
            a["ifname"],
            a["network"],
            a["pod_name"],
            ",".join(x for x in (a["ipv4"], a["ipv6"]) if x),
            ",".join(a["ports"]),
            a["node"],
        ]
        for a in atts
    ]
    print_table(["CONTAINER", "IFNAME", "NETWORK", "NAME", "ADDRESSES", "PORTS", "NODE"], rows)
    return 0
