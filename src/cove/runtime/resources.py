"""A container's memory and CPU limits (``-m/--memory``, ``--cpus``), in a
cgroup of its own, made only for a container that has a limit.

cgroup v1 (separate ``memory`` and ``cpu`` hierarchies): ``cove/<id>`` in
each, with ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``
at the same value where swap accounting is on: no swap beyond the limit),
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``. cgroup v2 (one tree):
``cove/<id>`` with ``memory.max`` (``memory.swap.max`` 0) and ``cpu.max``.
A process over its memory limit is killed by the kernel's OOM killer
(exit 137, as in Docker).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass

from cove.errors import InvalidArgument

ROOT = "/sys/fs/cgroup"
GROUP = "cove"
PERIOD_US = 100_000  # Docker's CFS period
MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses less than 6 MiB

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True, slots=True)
class Limits:
    memory: int = 0  # bytes; 0: no limit
    cpus: float = 0.0  # CPUs; 0: no limit

    def __bool__(self) -> bool:
        return bool(self.memory or self.cpus)


def parse_memory(text: str) -> int:
    """``-m 64m``: bytes, with Docker's suffixes b, k, m, g (powers of 1024)."""
    low = text.strip().lower()
    unit = low[-1:] if low[-1:] in _UNITS and low[-1:] != "" else ""
    number = low[: len(low) - len(unit)]
    if unit == "b" and number[-1:] in ("k", "m", "g"):  # 64mb, as Docker takes too
        unit, number = number[-1], number[:-1]
    try:
        value = int(float(number) * _UNITS[unit]) if number else -1
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidArgument(
            f"invalid --memory {text!r}: expected a size such as 512m or 1g (b, k, m, g)"
        )
    if value < MIN_MEMORY:
        raise InvalidArgument(f"invalid --memory {text!r}: the minimum is 6m")
    return value


def parse_cpus(text: str, available: int | None = None) -> float:
    """``--cpus 1.5``: more than 0, at most the host's CPUs."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value:
        raise InvalidArgument(f"invalid --cpus {text!r}: expected a number of CPUs such as 0.5")
    count = available if available is not None else (os.cpu_count() or 1)
    if value > count:
        raise InvalidArgument(
            f"invalid --cpus {text!r}: this host has {count} CPUs; give at most {count}"
        )
    return value


def is_v2(root: str = ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def groups(cid: str, root: str = ROOT) -> list[str]:
    """The container's cgroup directories (which may not exist)."""
    if is_v2(root):
        return [os.path.join(root, GROUP, cid)]
    return [os.path.join(root, c, GROUP, cid) for c in ("memory", "cpu")]


def join(cid: str, limits: Limits, root: str = ROOT) -> None:
    """Moves the calling process into the container's cgroup, made with its
    limits first. Raises ``OSError`` when the host's cgroups cannot do it
    (a container is never started without the limit it was given)."""
    if not limits:
        return
    quota = max(1000, round(limits.cpus * PERIOD_US))
    if is_v2(root):
        parent = os.path.join(root, GROUP)
        os.makedirs(parent, 0o755, exist_ok=True)
        _write(os.path.join(root, "cgroup.subtree_control"), "+memory +cpu")
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +cpu")
        group = os.path.join(parent, cid)
        os.makedirs(group, 0o755, exist_ok=True)
        if limits.memory:
            _write(os.path.join(group, "memory.max"), str(limits.memory))
            with contextlib.suppress(FileNotFoundError):
                _write(os.path.join(group, "memory.swap.max"), "0")
        if limits.cpus:
            _write(os.path.join(group, "cpu.max"), f"{quota} {PERIOD_US}")
        _write(os.path.join(group, "cgroup.procs"), "0")
        return
    memory, cpu = groups(cid, root)
    for needed, group, flag in ((limits.memory, memory, "-m"), (limits.cpus, cpu, "--cpus")):
        if needed and not os.path.isdir(os.path.dirname(os.path.dirname(group))):
            raise OSError(
                errno.ENOTSUP,
                f"{flag} needs the cgroup controller at {os.path.dirname(os.path.dirname(group))},"
                " which this host has not mounted",
            )
    if limits.memory:
        os.makedirs(memory, 0o755, exist_ok=True)
        _write(os.path.join(memory, "memory.limit_in_bytes"), str(limits.memory))
        with contextlib.suppress(FileNotFoundError):
            _write(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(limits.memory))
        _write(os.path.join(memory, "cgroup.procs"), "0")
    if limits.cpus:
        os.makedirs(cpu, 0o755, exist_ok=True)
        _write(os.path.join(cpu, "cpu.cfs_period_us"), str(PERIOD_US))
        _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))
        _write(os.path.join(cpu, "cgroup.procs"), "0")


def remove(cid: str, root: str = ROOT) -> None:
    """Removes the container's cgroups (once its processes are gone)."""
    for group in groups(cid, root):
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(group)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
