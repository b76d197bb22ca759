"""Which device files a container may open: CAP_MKNOD (in Docker's default
set) lets root make a node for the host's disk anywhere, and reading that
reads the agent's store and every host file. Docker closes this with the
device cgroup; so does cove, with one cgroup v1 ``devices`` group for every
container (no per-container directory to create or clean up), allowing only
the nodes of the minimal ``/dev`` (and mknod itself, as Docker does).

Where the v1 devices controller is missing, ``join`` says so and the caller
drops CAP_MKNOD instead.
"""

from __future__ import annotations

import os

CGROUP = "/sys/fs/cgroup/devices"
GROUP = "cove"

# Docker's default device rules (moby's oci/devices, less the tun device).
_ALLOW = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",  # null
    "c 1:5 rwm",  # zero
    "c 1:7 rwm",  # full
    "c 1:8 rwm",  # random
    "c 1:9 rwm",  # urandom
    "c 5:0 rwm",  # tty
    "c 5:2 rwm",  # ptmx
    "c 136:* rwm",  # pts
)


def join(root: str = CGROUP, joined: str = "") -> bool:
    """Moves the calling process (and so its future children) into cove's
    devices group, creating it with its rules first. False when the
    controller is not there. Raises ``OSError`` when it is there but
    cannot be used. ``joined``: what ``member_of`` said in the parent right
    after it joined (the supervisor); a process still there is in the
    group already and is not moved again."""
    if not os.path.exists(os.path.join(root, "devices.allow")):
        return False
    group = os.path.join(root, GROUP)
    os.makedirs(group, 0o755, exist_ok=True)
    # Rules go in only while the group still allows everything (new, or
    # left half-made by a crash): rewriting them under running containers
    # would deny their /dev/null for a moment.
    with open(os.path.join(group, "devices.list")) as f:
        if "a *:* rwm" in f.read().split("\n"):
            _write(os.path.join(group, "devices.deny"), "a")
            for rule in _ALLOW:
                _write(os.path.join(group, "devices.allow"), rule)
    # "0" is the writer itself, whatever PID namespace it is in. A process
    # born in the group (a child of the supervisor, which joins it once at
    # start) is not moved again: every move waits for the kernel (an RCU
    # grace period, 10 ms or more), the biggest part of a container's start.
    # Compared with what the parent saw after joining, in the same cgroup
    # namespace, not with a path: a namespace shows paths from its own root.
    if not joined or member_of() != joined:
        _write(os.path.join(group, "cgroup.procs"), "0")
    return True


def member_of(cgroups: str = "/proc/self/cgroup") -> str:
    """The calling process's group in the v1 devices hierarchy ("" when
    it cannot tell)."""
    try:
        with open(cgroups) as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) == 3 and "devices" in fields[1].split(","):
            return fields[2]
    return ""


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
