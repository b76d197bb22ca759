"""Snapshots of the whole store (Consul's /v1/snapshot): a gzip'd tar that
says what it is, read at one revision, and a restore that takes it whole or
not at all.

The archive holds three members, as Consul's holds meta.json, state.bin and
SHA256SUMS:

- ``meta.json``   {"Format": "cove-snapshot", "Version": 1, "Datacenter",
                  "Node", "Revision", "Created", "Keys"}
- ``state.json``  {"Keys": [{"Key": ..., "Value": <base64>}, ...]}
- ``SHA256SUMS``  the SHA-256 of the other two, as ``sha256sum`` prints them

Keys tied to a lease (an agent's liveness, its serfHealth check) are neither
saved nor touched by a restore: they belong to the agents running now.
A restore replaces every other key: those the snapshot lacks are deleted.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from cove.errors import CoveError, InvalidArgument
from cove.store.base import Delete, Op, Put, Store

FORMAT = "cove-snapshot"
VERSION = 1
MAX_MEMBER = 512 * 1024 * 1024  # a member larger than this is not ours


@dataclass(frozen=True, slots=True)
class Restored:
    keys: int  # keys written
    deleted: int  # keys the snapshot did not have, removed
    revision: int
    atomic: bool  # one store transaction (always on SQLite)


def save(store: Store, *, datacenter: str, node: str) -> tuple[bytes, int]:
    """The snapshot archive and the revision it was read at (one range
    of the whole store: consistent)."""
    rr = store.range("")
    keys = [
        {"Key": kv.key, "Value": base64.b64encode(kv.value).decode()}
        for kv in rr.kvs
        if not kv.lease
    ]
    state = json.dumps({"Keys": keys}, separators=(",", ":")).encode()
    meta = json.dumps(
        {
            "Format": FORMAT,
            "Version": VERSION,
            "Datacenter": datacenter,
            "Node": node,
            "Revision": rr.revision,
            "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "Keys": len(keys),
        },
        indent=2,
    ).encode()
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        for name, data in (("meta.json", meta), ("state.json", state))
    ).encode()
    raw = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name, data in (("meta.json", meta), ("state.json", state), ("SHA256SUMS", sums)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue(), rr.revision


def _bad(why: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid snapshot, nothing restored: {why}")


def read(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The snapshot's meta data and its keys; ``InvalidArgument`` naming
    what is wrong with a corrupt, foreign or tampered one."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for info in tar:
                if not info.isfile() or info.size > MAX_MEMBER:
                    raise _bad(f"unexpected archive member {info.name!r}")
                if info.name in members:
                    raise _bad(f"archive member {info.name!r} appears twice")
                f = tar.extractfile(info)
                members[info.name] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise _bad(f"not a gzip'd tar archive ({exc})") from exc
    if "state.bin" in members and "meta.json" in members:
        raise _bad("this is a Consul snapshot; cove restores only snapshots cove saved")
    for name in ("meta.json", "state.json", "SHA256SUMS"):
        if name not in members:
            raise _bad(f"the archive has no {name}")
    sums: dict[str, str] = {}
    for line in members["SHA256SUMS"].decode("ascii", "replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    for name in ("meta.json", "state.json"):
        if sums.get(name) != hashlib.sha256(members[name]).hexdigest():
            raise _bad(f"{name} does not match its SHA-256 sum (corrupt or altered)")
    try:
        meta = json.loads(members["meta.json"])
        state = json.loads(members["state.json"])
    except ValueError as exc:
        raise _bad(f"unreadable JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("Format") != FORMAT:
        raise _bad(f"meta.json does not say Format {FORMAT!r}")
    if meta.get("Version") != VERSION:
        raise _bad(f"snapshot version {meta.get('Version')!r}; this cove reads version {VERSION}")
    entries = state.get("Keys") if isinstance(state, dict) else None
    if not isinstance(entries, list):
        raise _bad("state.json has no Keys list")
    keys: dict[str, bytes] = {}
    for entry in entries:
        key = entry.get("Key") if isinstance(entry, dict) else None
        value = entry.get("Value") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise _bad("a state entry is not a Key and a base64 Value")
        try:
            keys[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"the value of {key!r} is not base64") from exc
    if meta.get("Keys") != len(keys):
        raise _bad(f"meta.json counts {meta.get('Keys')!r} keys, state.json holds {len(keys)}")
    return meta, keys


def restore(store: Store, data: bytes) -> Restored:
    """Replace the store's keys (all but lease-bound ones) with the
    snapshot's. The snapshot is checked whole before anything is written.
    One transaction where the store takes it (SQLite always; etcd up to its
    --max-txn-ops); past that, etcd gets batches (see ``atomic``)."""
    _, keys = read(data)
    current = store.range("")
    ops: list[Op] = []
    deleted = 0
    for kv in current.kvs:
        if kv.lease:
            continue  # an agent's liveness: not the snapshot's to change
        if kv.key not in keys:
            ops.append(Delete(kv.key))
            deleted += 1
    live = {kv.key for kv in current.kvs if kv.lease}
    for key, value in keys.items():
        if key not in live:
            ops.append(Put(key, value))
    if not ops:
        return Restored(len(keys), 0, current.revision, True)
    try:
        revision = store.txn((), ops).revision
        return Restored(len(keys), deleted, revision, True)
    except CoveError as exc:
        if "too many operations" not in exc.message:
            raise
    revision = 0
    for i in range(0, len(ops), 100):  # etcd's default --max-txn-ops is 128
        revision = store.txn((), ops[i : i + 100]).revision
    return Restored(len(keys), deleted, revision, False)
