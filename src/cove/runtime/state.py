"""What the supervisor knows about a container's process: its status, pid,
exit code and restarts. Kept on disk next to the container's spec, so a
restarted supervisor (or agent) finds it again."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    RESTARTING = "restarting"
    EXITED = "exited"


class RestartPolicy(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    # As ``always``: a container the user stopped stays stopped, an agent
    # restart included (cove's ``always`` already behaves so).
    UNLESS_STOPPED = "unless-stopped"

    def wants_restart(self, exit_code: int) -> bool:
        if self in (RestartPolicy.ALWAYS, RestartPolicy.UNLESS_STOPPED):
            return True
        return self is RestartPolicy.ON_FAILURE and exit_code != 0


def parse_restart(text: str) -> tuple[RestartPolicy, int]:
    """``no``, ``always``, ``unless-stopped``, ``on-failure`` or
    ``on-failure:N`` (at most N restarts; 0: no limit). ``ValueError``
    otherwise."""
    name, sep, count = text.partition(":")
    policy = RestartPolicy(name)
    if not sep:
        return policy, 0
    if policy is not RestartPolicy.ON_FAILURE or not count.isdigit():
        raise ValueError(text)
    return policy, int(count)


def restart_text(policy: RestartPolicy, limit: int) -> str:
    return f"{policy.value}:{limit}" if limit else policy.value


@dataclass(frozen=True, slots=True)
class ProcessState:
    id: str
    status: Status = Status.CREATED
    pid: int = 0
    pid_start: int = 0  # the pid's start time in /proc, so a reused pid is not mistaken
    exit_code: int | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    restart_count: int = 0
    stopped_by_user: bool = False
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "restart_count": self.restart_count,
            "stopped_by_user": self.stopped_by_user,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessState:
        code = data.get("exit_code")
        return cls(
            id=str(data["id"]),
            status=Status(data.get("status", "created")),
            pid=int(data.get("pid", 0)),
            pid_start=int(data.get("pid_start", 0)),
            exit_code=None if code is None else int(code),
            started_at=float(data.get("started_at", 0.0)),
            finished_at=float(data.get("finished_at", 0.0)),
            restart_count=int(data.get("restart_count", 0)),
            stopped_by_user=bool(data.get("stopped_by_user", False)),
            error=str(data.get("error", "")),
        )


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically, so a crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return None


def process_start_time(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot (0 if gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name (field 2) may contain spaces and parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else 0
