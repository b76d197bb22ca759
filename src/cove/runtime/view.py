"""How a container looks to API clients: the records ``ContainerService``
returns (``inspect``, ``ps``, the answers to run, stop, start, connect and
disconnect, and what ``exec`` needs). The API layer encodes them to JSON
(``cove.api.containers``); the CLI reads that JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cove.model import Endpoint
from cove.runtime.spec import Container
from cove.runtime.state import ProcessState


@dataclass(frozen=True, slots=True)
class ContainerView:
    """A container as stored, with its endpoints and its process's state."""

    container: Container
    endpoints: tuple[Endpoint, ...]
    state: ProcessState
    log_path: Path

    @property
    def short_id(self) -> str:
        return self.container.id[:12]

    @property
    def netns(self) -> str:
        """The network namespace's path; empty while on no network."""
        return self.endpoints[0].netns if self.endpoints else ""


@dataclass(frozen=True, slots=True)
class ExecInfo:
    """What ``cove exec`` needs to enter a running container."""

    id: str
    pid: int
    env: Mapping[str, str]
    workdir: str
    capabilities: tuple[str, ...]  # sorted, without the CAP_ prefix
    seccomp: bool
    user: str = ""  # run's -u: exec's default too, as Docker's


@dataclass(frozen=True, slots=True)
class AttachInfo:
    """What ``cove attach`` (and ``run -it``) needs: the supervisor's socket,
    which hands over the container's terminal or stdin."""

    id: str
    name: str
    socket: str
    tty: bool
    interactive: bool


def status_text(state: Mapping[str, Any]) -> str:
    """The STATUS column of ``cove ps`` for a state as the API sends it."""
    status = str(state.get("status", "?"))
    if status == "exited":
        return f"exited ({state.get('exit_code')})"
    return status
