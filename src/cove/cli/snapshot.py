"""`cove snapshot save|restore FILE`: the agent's /v1/snapshot, a backup
of the whole store (as `consul snapshot save|restore`)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from cove.cli.client import AgentClient
from cove.errors import CoveError, InvalidArgument
from cove.registry import snapshot


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    snap = sub.add_parser("snapshot", help="save or restore a backup of the whole store")
    ssub = snap.add_subparsers(dest="snapshot_cmd", required=True, metavar="COMMAND")
    p = ssub.add_parser("save", help="write the store's snapshot to FILE (gzip'd tar)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_save)
    p = ssub.add_parser("restore", help="replace the store's contents with FILE's")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_restore)


def _save(args: argparse.Namespace, client: AgentClient) -> int:
    status, body = client.request_raw("GET", "/v1/snapshot")
    if status != 200:
        raise _error(status, body)
    meta, _ = snapshot.read(body)  # refuse to keep a backup that would not restore
    path: Path = args.file
    # Written whole or not at all: a failed save leaves no half file.
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # it holds every ACL token's secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"Saved and verified snapshot to: {path} ({meta['Keys']} keys, index {meta['Revision']})")
    return 0


def _restore(args: argparse.Namespace, client: AgentClient) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {args.file}: {exc.strerror}") from exc
    snapshot.read(data)  # a corrupt or foreign file is refused here, before the agent
    status, body = client.request_raw("PUT", "/v1/snapshot", raw=data)
    if status != 200:
        raise _error(status, body)
    print("Restored snapshot")
    return 0


def _error(status: int, body: bytes) -> CoveError:
    err = CoveError(body.decode(errors="replace").strip() or f"HTTP {status}")
    err.http_status = status
    return err
