"""``-v``, ``--mount`` and ``--tmpfs`` as Docker has them (pure parsing;
the host checks are ``check_sources``). A ``-v`` source that is not an
absolute path names a volume (``cove.runtime.volumes``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cove.errors import InvalidArgument

# Docker's rule for volume names (``cove.runtime.volumes`` checks it too).
VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


class Kind(StrEnum):
    BIND = "bind"
    TMPFS = "tmpfs"
    VOLUME = "volume"  # source: the volume's name (its directory, in a LaunchSpec)


@dataclass(frozen=True, slots=True)
class Mount:
    kind: Kind
    target: str
    source: str = ""  # host path of a bind
    readonly: bool = False
    options: str = ""  # tmpfs: size=...,mode=...
    # a volume made for this container alone (``-v /path``, an image's
    # VOLUME): named at run, removed by ``rm -v`` and ``run --rm``
    anonymous: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {
            "type": self.kind.value, "source": self.source, "target": self.target,
            "readonly": self.readonly, "options": self.options,
        }  # fmt: skip
        if self.anonymous:
            out["anonymous"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Mount:
        return cls(
            Kind(data["type"]), str(data["target"]), str(data.get("source") or ""),
            bool(data.get("readonly")), str(data.get("options") or ""),
            bool(data.get("anonymous")),
        )  # fmt: skip


def _target(path: str, flag: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"invalid {flag}: container path {path!r} must be absolute")
    norm = os.path.normpath(path)
    if norm == "/":
        raise InvalidArgument(f"invalid {flag}: cannot mount over the container's /")
    return norm


def parse_volume(text: str) -> Mount:
    """``-v HOST:CONTAINER[:ro|rw]``, ``-v NAME:CONTAINER[:ro|rw]`` (a
    named volume, made on first use) or ``-v CONTAINER`` (an anonymous
    volume, its name given at run)."""
    parts = text.split(":")
    if len(parts) == 1 and text.startswith("/"):
        return Mount(Kind.VOLUME, _target(text, "-v"), anonymous=True)
    mode = ""
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("", "ro", "rw") or not parts[0]:
        raise InvalidArgument(
            f"invalid -v {text!r}: expected HOST:CONTAINER[:ro], NAME:CONTAINER or /CONTAINER"
        )
    host, target = parts
    if not host.startswith("/"):
        if not VOLUME_NAME.match(host):
            raise InvalidArgument(
                f"invalid -v {text!r}: {host!r} is neither an absolute host path nor a volume"
                " name (give the full path, e.g. $PWD/" + host.lstrip("./") + ")"
            )
        return Mount(Kind.VOLUME, _target(target, "-v"), host, mode == "ro")
    return Mount(Kind.BIND, _target(target, "-v"), os.path.normpath(host), mode == "ro")


def parse_tmpfs(text: str) -> Mount:
    """``--tmpfs PATH[:OPTIONS]`` (size=64m,mode=1777)."""
    path, _, options = text.partition(":")
    return Mount(Kind.TMPFS, _target(path, "--tmpfs"), options=_tmpfs_options(options, text))


def _tmpfs_options(options: str, text: str) -> str:
    allowed = ("size", "mode", "uid", "gid", "nr_inodes")
    for opt in filter(None, options.split(",")):
        key, _, value = opt.partition("=")
        if key not in allowed or not value or not value.replace("m", "").replace("k", "") \
                .replace("g", "").isalnum():  # fmt: skip
            raise InvalidArgument(
                f"invalid tmpfs option {opt!r} in {text!r}: use size=, mode=, uid=, gid="
            )
    return options


def parse_mount(text: str) -> Mount:
    """``--mount type=bind|tmpfs,source=..,target=..[,readonly]``."""
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key in ("readonly", "ro") and not sep:
            value = "true"
        elif not sep:
            raise InvalidArgument(f"invalid --mount {text!r}: {item!r} is not KEY=VALUE")
        fields[{"src": "source", "dst": "target", "destination": "target", "ro": "readonly"}
               .get(key, key)] = value  # fmt: skip
    kind = fields.pop("type", "volume")
    target = fields.pop("target", "")
    if not target:
        raise InvalidArgument(f"invalid --mount {text!r}: target= is required")
    readonly = fields.pop("readonly", "false").lower() in ("1", "true")
    if kind == "bind":
        source = fields.pop("source", "")
        fields.pop("bind-propagation", None)
        if fields:
            raise InvalidArgument(f"invalid --mount {text!r}: unknown {', '.join(fields)}")
        if not source.startswith("/"):
            raise InvalidArgument(
                f"invalid --mount {text!r}: source= must be an absolute host path"
            )
        return Mount(Kind.BIND, _target(target, "--mount"), os.path.normpath(source), readonly)
    if kind == "volume":
        source = fields.pop("source", "")
        if fields:
            raise InvalidArgument(f"invalid --mount {text!r}: unknown {', '.join(fields)}")
        if source and not VOLUME_NAME.match(source):
            raise InvalidArgument(
                f"invalid --mount {text!r}: type=volume takes source=NAME, a volume name"
                " (or no source, for an anonymous volume)"
            )
        return Mount(
            Kind.VOLUME, _target(target, "--mount"), source, readonly, anonymous=not source
        )
    if kind == "tmpfs":
        opts = []
        if "tmpfs-size" in fields:
            opts.append(f"size={fields.pop('tmpfs-size')}")
        if "tmpfs-mode" in fields:
            opts.append(f"mode={fields.pop('tmpfs-mode')}")
        if fields:
            raise InvalidArgument(f"invalid --mount {text!r}: unknown {', '.join(fields)}")
        options = _tmpfs_options(",".join(opts), text)
        return Mount(Kind.TMPFS, _target(target, "--mount"), readonly=readonly, options=options)
    raise InvalidArgument(f"invalid --mount {text!r}: type must be bind, volume or tmpfs")


def parse_all(
    volumes: Sequence[str], mounts: Sequence[str], tmpfs: Sequence[str]
) -> tuple[Mount, ...]:
    """Raises ``InvalidArgument`` (with a ``mount`` detail) naming the flag."""
    try:
        out = [parse_volume(v) for v in volumes] + [parse_mount(m) for m in mounts]
        out += [parse_tmpfs(t) for t in tmpfs]
    except InvalidArgument as exc:
        raise InvalidArgument(exc.message, mount="invalid") from None
    seen: set[str] = set()
    for m in out:
        if m.target in seen:
            raise InvalidArgument(f"duplicate mount point {m.target}", mount=m.target)
        seen.add(m.target)
    return tuple(out)


def check_sources(mounts: Sequence[Mount], made_if_missing: Sequence[str] = ()) -> None:
    """``InvalidArgument`` for a bind whose host path does not exist (but
    for those in ``made_if_missing``: ``-v``'s, made as Docker makes them)."""
    for m in mounts:
        if m.kind is not Kind.BIND or m.source in made_if_missing:
            continue
        if not os.path.lexists(m.source):
            raise InvalidArgument(
                f"bind source path does not exist: {m.source} (create it first)", mount=m.source
            )
