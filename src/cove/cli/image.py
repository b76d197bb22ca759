"""`cove image load|ls|rm|inspect|pull`, and Docker's short forms `cove
images`, `cove rmi`, `cove pull`.

``load`` and ``pull`` write the agent's image store themselves (the agent
says where; the store's lock keeps them apart from ``rmi``): the archive
goes straight from disk into the store, with progress on this terminal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cove.cli.client import AgentClient
from cove.cli.output import print_table
from cove.errors import InvalidArgument
from cove.image import pull as pulling
from cove.image import reference
from cove.image.store import Image, ImageStore, Progress


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = sub.add_parser("image", help="load, pull, list and remove images")
    isub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    p = isub.add_parser("load", help="load images from a docker-archive or OCI archive tar")
    p.add_argument("-i", "--input", required=True, metavar="ARCHIVE")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    p.set_defaults(func=_load)
    for s, name in ((isub, "pull"), (sub, "pull")):
        p = s.add_parser(name, help="pull an image from a registry")
        p.add_argument("ref", metavar="REF")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress")
        p.add_argument(
            "--tls-verify", choices=("true", "false"), default="true",
            help="false: plain HTTP or an unverified certificate (loopback registries always)",
        )  # fmt: skip
        p.add_argument("--creds", default="", metavar="USER:PASSWORD")
        p.add_argument("--authfile", default="", help="registry credentials (auth.json)")
        p.set_defaults(func=_pull)
    for s, name in ((isub, "ls"), (sub, "images")):
        p = s.add_parser(name, help="list images")
        p.add_argument("-q", "--quiet", action="store_true", help="IDs only")
        p.add_argument("--format", choices=("table", "json"), default="table")
        p.set_defaults(func=_ls)
    for s, name in ((isub, "rm"), (sub, "rmi")):
        p = s.add_parser(name, help="remove images")
        p.add_argument("-f", "--force", action="store_true", help="untag even if in use")
        p.add_argument("refs", nargs="+", metavar="IMAGE")
        p.set_defaults(func=_rm)
    p = isub.add_parser("inspect", help="show images as JSON")
    p.add_argument("refs", nargs="+", metavar="IMAGE")
    p.set_defaults(func=_inspect)


def _store(client: AgentClient) -> ImageStore:
    if client.remote is not None:
        raise InvalidArgument(
            "image load and pull write the agent's image store: run them on the agent's host"
            " (without --host)"
        )
    return ImageStore(Path(client.request("GET", "/api/image-store")["root"]))


class _Meter:
    """One updating line per layer on a terminal; nothing otherwise."""

    def __init__(self, quiet: bool) -> None:
        self._on = not quiet and sys.stdout.isatty()
        self._last = 0.0
        self._line = ""

    def __call__(self, p: Progress) -> None:
        if not self._on:
            return
        now = time.monotonic()
        if p.cached:
            text = f"layer {p.index}/{p.total} {p.diff_id[7:19]}: already present"
        else:
            if now - self._last < 0.1:
                return
            text = f"layer {p.index}/{p.total} {p.diff_id[7:19]}: {_size(p.done)}"
        self._last = now
        sys.stdout.write("\r" + text.ljust(len(self._line)))
        sys.stdout.flush()
        self._line = text

    def done(self) -> None:
        if self._on and self._line:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _report(images: list[Image]) -> None:
    for img in images:
        for tag in img.tags:
            print(f"Loaded image: {tag}")
        if not img.tags:
            print(f"Loaded image ID: {img.id}")


def _load(args: argparse.Namespace, client: AgentClient) -> int:
    meter = _Meter(args.quiet)
    try:
        images = _store(client).load(Path(args.input), meter)
    finally:
        meter.done()
    _report(images)
    return 0


def _pull(args: argparse.Namespace, client: AgentClient) -> int:
    ref = reference.parse(args.ref)
    store = _store(client)
    quiet = args.quiet or not sys.stdout.isatty()
    tmp = pulling.fetch(
        ref, store.root / "tmp-pull", insecure=args.tls_verify == "false", creds=args.creds,
        authfile=args.authfile, quiet=quiet,
    )  # fmt: skip
    meter = _Meter(quiet)
    try:
        images = store.load(tmp, meter)
    finally:
        meter.done()
        shutil.rmtree(tmp.parent, ignore_errors=True)
    for img in images:
        print(f"{ref}: {img.id}" if not quiet else img.id)
    return 0


def _ls(args: argparse.Namespace, client: AgentClient) -> int:
    items: list[dict[str, Any]] = client.request("GET", "/api/images")
    if args.format == "json":
        print(json.dumps(items, indent=2))
        return 0
    if args.quiet:
        for i in items:
            print(i["id"][7:19])
        return 0
    rows = []
    for i in items:
        for tag in i["tags"] or ["<none>:<none>"]:
            repo, _, t = tag.rpartition(":")
            rows.append((repo, t, i["id"][7:19], i["created"][:19] or "-", _size(i["size"])))
    print_table(("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"), rows)
    return 0


def _rm(args: argparse.Namespace, client: AgentClient) -> int:
    failed = 0
    for ref in args.refs:
        query = urlencode({"ref": ref, **({"force": "1"} if args.force else {})})
        try:
            res = client.request("DELETE", f"/api/images?{query}")
        except Exception as exc:
            message = getattr(exc, "message", str(exc))
            print(f"cove: error: {message}", file=sys.stderr)
            failed = getattr(exc, "exit_code", 1)
            continue
        for line in res["done"]:
            print(line)
    return failed


def _inspect(args: argparse.Namespace, client: AgentClient) -> int:
    out = [client.request("GET", f"/api/images/inspect?{urlencode({'ref': r})}") for r in args.refs]
    print(json.dumps(out, indent=2))
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{n}B"
        n /= 1000  # type: ignore[assignment]
    return f"{n}B"
