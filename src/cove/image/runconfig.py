"""What ``cove run IMAGE`` runs (pure): Docker's rules for entrypoint,
cmd, environment, working directory and user."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cove.errors import InvalidArgument
from cove.image.archive import ImageConfig


@dataclass(frozen=True, slots=True)
class RunConfig:
    argv: tuple[str, ...]
    env: dict[str, str]
    workdir: str


def apply(
    image: str, config: ImageConfig, argv: Sequence[str], env: Mapping[str, str], workdir: str
) -> RunConfig:
    """The user's command replaces the image's CMD and follows its
    ENTRYPOINT; the user's variables override the image's; the user's
    working directory wins over WORKDIR (``/`` when neither)."""
    full = (*config.entrypoint, *(argv or config.cmd))
    if not full:
        raise InvalidArgument(
            f"image {image} has no command (no ENTRYPOINT or CMD): give one after the image"
        )
    merged: dict[str, str] = {}
    for item in config.env:
        key, sep, value = item.partition("=")
        if key and sep:
            merged[key] = value
    merged.update(env)
    return RunConfig(tuple(full), merged, workdir or config.workdir or "/")


def resolve_user(user: str, passwd: bytes | None, group: bytes | None) -> tuple[int, int]:
    """``USER`` (``name``, ``uid``, ``name:group``, ``uid:gid``) to numbers
    from the image's /etc/passwd and /etc/group. Raises
    ``InvalidArgument`` for a name the image does not define."""
    name, _, grp = user.partition(":")
    users = _table(passwd)
    if name.isdigit():
        uid = int(name)
        gid = next((int(r[3]) for r in users if r[2] == name and r[3].isdigit()), uid)
    else:
        row = next((r for r in users if r[0] == name), None)
        if row is None or not row[2].isdigit() or not row[3].isdigit():
            raise InvalidArgument(f"user {name!r} of the image is not in its /etc/passwd")
        uid, gid = int(row[2]), int(row[3])
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            g = next((r for r in _table(group) if r[0] == grp), None)
            if g is None or not g[2].isdigit():
                raise InvalidArgument(f"group {grp!r} of the image is not in its /etc/group")
            gid = int(g[2])
    return uid, gid


def _table(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    rows = []
    for line in data.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and not line.startswith("#"):
            rows.append(fields)
    return rows
