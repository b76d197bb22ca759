"""``-u USER[:GROUP]`` for ``cove run`` and ``cove exec``, as Docker reads
it: a name or a number each, names looked up in the container's own
``/etc/passwd`` and ``/etc/group`` (read as files: the host's NSS never
answers for a container). A numeric user without an entry runs with group
0, as Docker's does."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str = "/"


def _entries(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def lookup(spec: str, root: str = "/") -> Identity:
    """The identity ``spec`` names inside ``root``. Raises ``LookupError``
    naming what is missing."""
    user, _, group = spec.partition(":")
    if not user:
        raise LookupError(f"invalid user {spec!r}: expected USER[:GROUP]")
    passwd = [e for e in _entries(Path(root, "etc/passwd")) if len(e) >= 7]
    groups = [e for e in _entries(Path(root, "etc/group")) if len(e) >= 4]
    entry = next((e for e in passwd if (e[2] if user.isdigit() else e[0]) == user), None)
    if entry is None and not user.isdigit():
        raise LookupError(f"no user {user!r} in the container's /etc/passwd")
    uid = int(user) if user.isdigit() else int(entry[2])  # type: ignore[index]
    gid = int(entry[3]) if entry is not None else 0
    home = entry[5] if entry is not None else "/"
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((g for g in groups if g[0] == group), None)
            if found is None:
                raise LookupError(f"no group {group!r} in the container's /etc/group")
            gid = int(found[2])
    name = entry[0] if entry is not None else None
    extra = tuple(
        sorted({int(g[2]) for g in groups if name is not None and name in g[3].split(",")})
    )
    return Identity(uid, gid, tuple(dict.fromkeys((gid, *extra))), home)


def switch(identity: Identity) -> None:
    """Become ``identity`` (groups, then group, then user). Raises
    ``OSError``; a process that was root keeps no capability after."""
    os.setgroups(list(identity.groups))
    os.setgid(identity.gid)
    os.setuid(identity.uid)
