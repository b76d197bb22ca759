"""The agent's own files that no container may see: they hold the store
(tokens and every secret in it), the supervisor's socket and the API
socket, which is root on this host."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cove.agent.config import AgentConfig

# Directories many programs share: covering one with an empty tmpfs would
# break containers that see the host's filesystem, so only the agent's own
# file in it is covered.
_SHARED = (
    "/", "/run", "/var/run", "/tmp", "/var/tmp", "/dev", "/dev/shm", "/var", "/var/lib",
    "/etc", "/home", "/root", "/usr", "/srv", "/opt", "/mnt", "/media",
)  # fmt: skip
_SHARED_DIRS = frozenset(Path(p) for p in _SHARED)


def private_paths(config: AgentConfig, extra: Iterable[Path] = ()) -> tuple[Path, ...]:
    """Directories (covered by an empty read-only tmpfs) and files (covered
    by an empty read-only file) to hide in every container's mount
    namespace. ``extra`` adds other secrets (key files, a config file
    holding tokens)."""
    paths = [config.state_dir, config.run_dir]
    sock_dir = config.socket.parent
    paths.append(config.socket if sock_dir.resolve() in _SHARED_DIRS else sock_dir)
    if config.store_url.startswith("sqlite:"):
        db = Path(config.store_url.removeprefix("sqlite:"))
        paths.append(db if db.parent.resolve() in _SHARED_DIRS else db.parent)
    paths.extend(extra)
    out: list[Path] = []
    for p in paths:
        p = p.absolute()
        if p not in out and p not in _SHARED_DIRS:
            out.append(p)
    return tuple(out)
