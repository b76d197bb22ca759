"""Named volumes (``-v NAME:/path``, ``cove volume ...``), as Docker's
``local`` driver keeps them: a directory of this host per volume,
``<root>/<name>/_data`` (what containers mount) beside ``meta.json``
(when it was made, its labels). Volumes hold a host's data, so they are
this node's alone, like Docker's; which containers use one is read from
the store by the caller (``users``).

A volume appears whole or not at all: it is built under a temporary name
and renamed into place, so a crash or a full disk leaves no half-made
volume (only a ``.tmp-`` directory, removed by the next ``create``)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove.clock import Clock
from cove.errors import Conflict, InvalidArgument, NotFound, storage_error
from cove.runtime.mounts import VOLUME_NAME as NAME

_DATA = "_data"
_META = "meta.json"
_TMP = ".tmp-"
_FILLED = "filled"
# Docker's label on the volumes it makes for one container (-v /path, VOLUME)
ANONYMOUS = "com.docker.volume.anonymous"


def filled_marker(data_dir: str) -> str:
    """The file whose presence says the volume whose data directory is
    ``data_dir`` has had its one copy of the image's files (made at its
    first mount, whether or not there was anything to copy), so that a
    container restarting over a volume emptied since gets nothing back."""
    return os.path.join(os.path.dirname(data_dir), _FILLED)


def check_name(name: str) -> str:
    """``InvalidArgument`` unless ``name`` is a valid volume name."""
    if not NAME.match(name) or len(name) > 255:
        raise InvalidArgument(
            f"invalid volume name {name!r}: use letters, digits and _ . - (starting with a"
            " letter or digit); a host directory is given by its absolute path",
            volume=name,
        )
    return name


@dataclass(frozen=True, slots=True)
class Volume:
    name: str
    mountpoint: Path  # the directory containers mount
    created: float
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "driver": "local",
            "mountpoint": str(self.mountpoint),
            "created": self.created,
            "labels": dict(self.labels),
            "scope": "local",
        }


class VolumeStore:
    """The volumes under ``root``. Every method raises ``CoveError``s only
    (a full disk as ``storage_error``)."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self.root = root
        self._clock = clock
        # create/remove of one volume against another create/remove
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        """Where volume ``name``'s data is (whether or not it exists)."""
        return self.root / check_name(name) / _DATA

    def get(self, name: str) -> Volume:
        folder = self.root / check_name(name)
        try:
            meta = json.loads((folder / _META).read_text())
        except FileNotFoundError:
            raise NotFound(f"no such volume {name}", volume=name) from None
        except (OSError, ValueError):
            meta = {}  # made by hand or damaged: still a volume, with less to say
        if not (folder / _DATA).is_dir():
            raise NotFound(f"no such volume {name}", volume=name)
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        return Volume(name, folder / _DATA, float(meta.get("created") or 0.0), labels)

    def all(self) -> list[Volume]:
        out: list[Volume] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(os.listdir(self.root)):
                if entry.startswith(_TMP) or not NAME.match(entry):
                    continue
                with contextlib.suppress(NotFound):
                    out.append(self.get(entry))
        return out

    def create(
        self, name: str = "", labels: Mapping[str, str] | None = None
    ) -> tuple[Volume, bool]:
        """The volume ``name`` (a new random name when empty), made if it
        is not there; also whether it was made now. As Docker's, creating
        a volume that exists returns it unchanged."""
        name = check_name(name) if name else secrets.token_hex(32)
        with self._lock:
            with contextlib.suppress(NotFound):
                return self.get(name), False
            try:
                self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._clean_tmp()
                tmp = self.root / f"{_TMP}{secrets.token_hex(8)}"
                tmp.mkdir(mode=0o700)
                try:
                    # Docker's: the data directory is world-searchable, so a
                    # container's non-root user can reach what it may read.
                    (tmp / _DATA).mkdir(mode=0o755)
                    meta = {"created": self._clock.time(), "labels": dict(labels or {})}
                    (tmp / _META).write_text(json.dumps(meta))
                    os.rename(tmp, self.root / name)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            except OSError as exc:
                raise storage_error(exc, str(self.root), f"cannot create volume {name}") from exc
            return self.get(name), True

    def remove(self, name: str, users: Callable[[str], list[str]], *, force: bool = False) -> bool:
        """Remove volume ``name`` and its data; ``Conflict`` naming the
        containers that use it (running or not, as Docker's); ``NotFound``
        unless ``force``. True if it was removed."""
        with self._lock:
            try:
                volume = self.get(name)
            except NotFound:
                if force:
                    return False
                raise
            using = users(name)
            if using:
                raise Conflict(
                    f"volume {name} is in use by container {', '.join(using)}: remove the"
                    " container first (cove rm)",
                    volume=name,
                )
            folder = volume.mountpoint.parent
            # renamed away first, so a failure half-way leaves no half volume
            doomed = self.root / f"{_TMP}{secrets.token_hex(8)}"
            try:
                os.rename(folder, doomed)
            except OSError as exc:
                raise storage_error(exc, str(folder), f"cannot remove volume {name}") from exc
            shutil.rmtree(doomed, ignore_errors=True)
            return True

    def prune(self, users: Callable[[str], list[str]], *, everything: bool = False) -> list[str]:
        """Remove the anonymous volumes no container uses (with
        ``everything``, named ones too: Docker 23's ``prune --all``); their
        names."""
        removed: list[str] = []
        for volume in self.all():
            if not everything and ANONYMOUS not in volume.labels:
                continue
            with contextlib.suppress(Conflict, NotFound):
                if self.remove(volume.name, users):
                    removed.append(volume.name)
        return removed

    def _clean_tmp(self) -> None:
        for entry in os.listdir(self.root):
            if entry.startswith(_TMP):
                shutil.rmtree(self.root / entry, ignore_errors=True)
