"""nftables through its JSON interface: cove's own tables, replaced atomically.

Each concern (networks, published ports, VIPs, policy) owns one table whose
name starts with ``cove``. A change compiles the concern's whole table and
swaps it in one ``nft -j -f -`` transaction: the table is created if missing,
deleted, and recreated with its contents, all in one batch, so there is never
a moment with a half-built table. Tables of other programs are never read or
written.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from cove.datapath import nftlist
from cove.errors import DatapathError, DatapathRefused, Unavailable

log = logging.getLogger(__name__)

TABLE_PREFIX = "cove"
_OBJECT_KINDS = ("chain", "rule", "set", "map", "element", "flowtable", "counter", "quota")


class Nft:
    """Runs nft JSON batches. Used only by datapath code."""

    def __init__(self, binary: str = "nft") -> None:
        path = shutil.which(binary)
        if path is None:
            raise Unavailable(f"nftables is not installed: '{binary}' not found")
        self._binary = path

    def close(self) -> None:
        """Nothing to release (each batch is its own process); here so
        ``Nft`` and ``LibNft`` are interchangeable."""

    def transaction(self, commands: Sequence[Mapping[str, Any]]) -> None:
        """Run ``commands`` (nft JSON commands such as ``{"add": {...}}``)
        as one atomic batch. Raises ``DatapathError`` with nft's message."""
        if not commands:
            return
        payload = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
        proc = subprocess.run(
            [self._binary, "-j", "-f", "-"],
            input=payload,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            msg = proc.stderr.strip().splitlines()
            raise DatapathRefused(
                "nftables rejected the change: " + (msg[0] if msg else f"exit {proc.returncode}"),
                stderr=proc.stderr.strip()[:2000],
            )

    def replace_table(self, family: str, name: str, objects: Sequence[Mapping[str, Any]]) -> None:
        """Atomically replace table ``family name`` with ``objects``.

        ``objects`` are nft JSON objects without a command wrapper, e.g.
        ``{"chain": {"name": "fwd", "type": "filter", ...}}`` or
        ``{"rule": {"chain": "fwd", "expr": [...]}}``; their ``family`` and
        ``table`` fields are filled in here.
        """
        self.transaction(replace_commands(family, name, objects))

    def delete_table(self, family: str, name: str) -> None:
        """Delete one cove table if it exists."""
        _check_name(name)
        table = {"family": family, "name": name}
        self.transaction([{"add": {"table": table}}, {"delete": {"table": table}}])

    def tables(self) -> list[tuple[str, str]]:
        """(family, name) of every table cove owns in this namespace."""
        return [t for t in self._all_tables() if t[1].startswith(TABLE_PREFIX)]

    def list_table(self, family: str, name: str) -> list[dict[str, Any]]:
        """The objects of one table, as ``nft -j list table`` gives them."""
        _check_name(name)
        proc = subprocess.run(
            [self._binary, "-j", "list", "table", family, name],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return []
        data = json.loads(proc.stdout or "{}")
        return [o for o in data.get("nftables", []) if "metainfo" not in o]

    def has_table(self, family: str, name: str) -> bool:
        """Whether table ``family name`` is there. ``list tables`` reads
        every table with its contents first (some 50 ms of nft with a few
        hundred containers); this reads one."""
        _check_name(name)
        proc = subprocess.run(
            [self._binary, "list", "table", family, name], capture_output=True, check=False
        )
        return proc.returncode == 0

    def list_set(self, family: str, table: str, name: str) -> list[Any] | None:
        """The elements of one set, None when it (or its table) is not
        there. (nft 1.0.6 cannot print some tables as JSON at all, so a
        set is read on its own.)"""
        _check_name(table)
        proc = subprocess.run(
            [self._binary, "-j", "list", "set", family, table, name],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return None
        for o in json.loads(proc.stdout or "{}").get("nftables", []):
            body = o.get("set")
            if body and body.get("name") == name:
                elems = body.get("elem", [])
                return list(elems) if isinstance(elems, list) else []
        return None

    def _all_tables(self) -> list[tuple[str, str]]:
        try:
            return nftlist.list_tables()
        except OSError as exc:  # then nft says why, or answers
            log.debug("nftables table dump: %s; asking nft", exc)
        proc = subprocess.run(
            [self._binary, "-j", "list", "tables"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise DatapathError("cannot list nftables tables: " + proc.stderr.strip())
        data = json.loads(proc.stdout or "{}")
        return [
            (o["table"]["family"], o["table"]["name"])
            for o in data.get("nftables", [])
            if "table" in o
        ]


def replace_commands(
    family: str, name: str, objects: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The batch that swaps table ``family name`` for ``objects`` at once:
    create it if missing, delete it, add it back with its contents."""
    _check_name(name)
    table = {"family": family, "name": name}
    commands: list[dict[str, Any]] = [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
    ]
    for obj in objects:
        (kind, body), *rest = obj.items()
        if rest or kind not in _OBJECT_KINDS:
            raise DatapathError(f"not an nft object: {obj!r}")
        commands.append({"add": {kind: {**body, "family": family, "table": name}}})
    return commands


def _check_name(name: str) -> None:
    if not name.startswith(TABLE_PREFIX):
        raise DatapathError(f"refusing to touch table {name!r}: cove owns only 'cove*' tables")
