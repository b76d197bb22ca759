"""Recorded intents of ``cove run``: the step that spans the agent, the
store, the kernel and the supervisor, written down on local disk before the
first of them, so that whoever comes next (this agent's periodic pass, or a
restarted agent after a kill -9) knows whether to finish it or undo it.

An intent is one small JSON file per container id in ``<state>/intents``:

- ``pending``: a run is in progress in this agent. After a crash it is
  finished when the store holds the container (its record is the desired
  state, which a restart starts) and undone when it does not (the
  addresses it may have claimed are released).
- ``abort``: the run failed and answered an error, but could not undo all
  it had done (the store was unreachable, say). It is undone as soon as it
  can be, and the container is never started meanwhile.

A file that cannot be written (the disk is full) makes the run fail before
anything changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cove.errors import storage_error
from cove.runtime.state import read_json, write_json

log = logging.getLogger(__name__)


class Phase(StrEnum):
    PENDING = "pending"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Intent:
    id: str
    name: str
    networks: tuple[str, ...]
    phase: Phase = Phase.PENDING

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "networks": list(self.networks),
            "phase": self.phase.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Intent:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            networks=tuple(str(n) for n in data.get("networks", ())),
            phase=Phase(data.get("phase", Phase.PENDING.value)),
        )


class IntentLog:
    """The intents of one agent's state directory. Thread-safe: each intent
    belongs to one container id, written by one request at a time."""

    def __init__(self, folder: Path) -> None:
        self._dir = folder

    def record(self, intent: Intent) -> None:
        """Write ``intent`` (replacing the one of its id); raises
        ``StorageFull`` or ``StoreError`` when the disk refuses it."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_json(self._dir / f"{intent.id}.json", intent.to_json())
        except OSError as exc:
            with contextlib.suppress(OSError):
                (self._dir / f"{intent.id}.json.tmp").unlink()
            raise storage_error(exc, str(self._dir), "cannot record the run") from exc

    def done(self, cid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._dir / f"{cid}.json")

    def drop_partial(self) -> None:
        """Remove files a crash left half-written (call before any run of
        this agent can be writing one)."""
        if self._dir.is_dir():
            for path in self._dir.glob("*.tmp"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def all(self) -> Iterator[Intent]:
        if not self._dir.is_dir():
            return
        for path in sorted(self._dir.glob("*.json")):
            data = read_json(path)
            try:
                yield Intent.from_json(data or {})
            except (KeyError, ValueError):
                log.warning("dropping unreadable intent %s", path)
                with contextlib.suppress(OSError):
                    path.unlink()
