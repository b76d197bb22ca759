"""Unpacking one layer tar into a directory overlayfs can stack: the
whiteouts of the OCI layer format (``.wh.NAME``, ``.wh..wh..opq``) become
overlayfs's own (a 0/0 character device, the ``trusted.overlay.opaque``
attribute), while the bytes are hashed on the way through so the layer
is checked against its digests in the same single read.

Raises ``InvalidArgument`` for a layer that is corrupt, does not match
its digest or tries to write outside its directory; ``OSError`` for the
disk (full, say).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from typing import IO, Any

import zstandard

from cove.errors import InvalidArgument

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XATTR = "SCHILY.xattr."
log = logging.getLogger(__name__)
# Extraction filters came with Python 3.11.4/3.12, and 3.14 makes "data" the
# default, which refuses what images hold (absolute symbolic links, setuid
# bits). ``_check`` does the path and link checks itself, so the extraction
# stays full where there is a choice; 3.11.0-3.11.3 know no ``filter=``.
_EXTRACT_ARGS: dict[str, Any] = (
    {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
)


class HashingReader:
    """A read-only stream that hashes (sha256) and counts what passes."""

    def __init__(self, src: IO[bytes], progress: Callable[[int], None] | None = None) -> None:
        self._src = src
        self.hash = hashlib.sha256()
        self.count = 0
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self.hash.update(data)
        self.count += len(data)
        if self._progress is not None and data:
            self._progress(len(data))
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def unpack_layer(
    src: IO[bytes],
    dest: str,
    *,
    digest: str,
    diff_id: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Extracts the (plain, gzip or zstd) layer tar read from ``src`` into the
    new, empty directory ``dest``; checks the stream against ``digest``
    (when given) and its uncompressed tar against ``diff_id``. Returns
    the uncompressed size."""
    raw = HashingReader(src, progress)
    head = _Peek(raw)
    magic = head.peek(4)
    stream: IO[bytes]
    if magic[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=head, mode="rb")  # type: ignore[call-overload]
    elif magic == _ZSTD_MAGIC:
        # the layers podman can push (tar+zstd); several frames may follow
        stream = zstandard.ZstdDecompressor().stream_reader(
            head,  # type: ignore[arg-type]
            read_across_frames=True,
        )
    else:
        stream = head  # type: ignore[assignment]
    plain = HashingReader(stream)
    whiteouts: list[str] = []
    opaque: list[str] = []
    root = os.path.realpath(dest)  # once: resolving it per entry was half the time
    try:
        with tarfile.open(fileobj=plain, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                kept = _check(member, root, whiteouts, opaque)
                if kept is not None:
                    tar.extract(kept, dest, numeric_owner=True, **_EXTRACT_ARGS)
                    # after: the chown of the extraction clears security.capability
                    _set_xattrs(kept, os.path.join(dest, kept.name))
        plain.drain()
        raw.drain()
    except (
        tarfile.TarError,
        EOFError,
        KeyError,
        zlib.error,
        gzip.BadGzipFile,
        zstandard.ZstdError,
    ) as exc:
        raise InvalidArgument(f"layer {diff_id[:19]} is corrupt or truncated: {exc}") from exc
    if digest and raw.digest != digest:
        raise InvalidArgument(f"layer {digest[:19]} does not match its digest ({raw.digest[:19]})")
    if plain.digest != diff_id:
        raise InvalidArgument(
            f"layer {diff_id[:19]} does not match its diff_id ({plain.digest[:19]})"
        )
    for path in whiteouts:
        if not os.path.lexists(path):
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    for path in opaque:
        os.setxattr(path, "trusted.overlay.opaque", b"y")
    return plain.count


def _set_xattrs(member: tarfile.TarInfo, path: str) -> None:
    """The extended attributes the layer gives ``member`` (the
    ``SCHILY.xattr.*`` pax records Docker, podman and GNU tar write): file
    capabilities (ping's cap_net_raw) and ``user.*`` ones. Others are left
    out: ``trusted.*`` would let a layer forge overlayfs's own whiteouts
    and redirects, ``security.selinux`` and ACLs are the host's to set.
    A filesystem without extended attributes keeps the files without them."""
    for key, text in member.pax_headers.items():
        if not key.startswith(_XATTR):
            continue
        name = key[len(_XATTR) :]
        if not (name.startswith("user.") or name == "security.capability"):
            log.debug("layer entry %s: extended attribute %s left out", member.name, name)
            continue
        # tarfile decodes pax values as UTF-8, undecodable bytes escaped
        value = text.encode("utf-8", "surrogateescape")
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP or (exc.errno == errno.EPERM and member.issym()):
                log.warning("layer entry %s: extended attribute %s not kept: %s",
                            member.name, name, exc.strerror)  # fmt: skip
                continue
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the disk's
            raise InvalidArgument(
                f"layer entry {member.name!r} has extended attribute {name} that cannot be"
                f" set: {exc.strerror or exc}"
            ) from exc


def _check(
    member: tarfile.TarInfo, root: str, whiteouts: list[str], opaque: list[str]
) -> tarfile.TarInfo | None:
    """The member to extract (renamed inside ``root``, the layer's
    directory with its own links resolved), or None for one
    recorded as a whiteout or skipped (device nodes). Raises
    ``InvalidArgument`` for a path or hard link leading outside."""
    name = member.name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    if not name or name == ".":
        return None
    target = _inside(root, name, member.name)
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    if base == OPAQUE:
        opaque.append(parent)
        return None
    if base.startswith(WHITEOUT):
        whiteouts.append(os.path.join(parent, base[len(WHITEOUT) :]))
        return None
    if member.ischr() or member.isblk():
        return None  # a container gets its own /dev; none from an image
    if os.path.islink(target) or (
        os.path.lexists(target) and not (member.isdir() and os.path.isdir(target))
    ):
        # replaced, as tar does: writing or chown-ing through a link left by
        # an earlier entry would reach the host
        os.unlink(target)
    if member.islnk():
        link = member.linkname.lstrip("/")
        # link() follows a symbolic link: the file itself must be inside
        real = os.path.realpath(_inside(root, link, member.linkname))
        if os.path.commonpath([real, root]) != root:
            raise InvalidArgument(f"layer entry {member.linkname!r} points outside the image")
        return _renamed(member, os.path.relpath(target, root), link)
    return _renamed(member, os.path.relpath(target, root), member.linkname)


def _renamed(member: tarfile.TarInfo, name: str, linkname: str) -> tarfile.TarInfo:
    """``member`` under its checked name. Renamed in place rather than
    copied (``TarInfo.replace`` is only in Python 3.11.4 and later): when
    a hard link cannot be made, tar looks the member up in its own list
    by identity, and a copy makes Python 3.11.2 fail with ValueError
    instead of reporting the missing target."""
    member.name = name
    member.linkname = linkname
    return member


def _inside(root: str, name: str, shown: str) -> str:
    """``root/name`` with the links of its parent directories resolved, or
    ``InvalidArgument`` when that is outside ``root`` (``../``, or through
    a link); ``root`` has no links of its own (``os.path.realpath``)."""
    head, base = os.path.split(os.path.normpath(name))
    parent = os.path.realpath(os.path.join(root, head))
    if base in ("", ".", "..") or os.path.commonpath([parent, root]) != root:
        raise InvalidArgument(f"layer entry {shown!r} points outside the image")
    return os.path.join(parent, base)


class _Peek:
    """Lets the first bytes be looked at without consuming them."""

    def __init__(self, src: HashingReader) -> None:
        self._src = src
        self._buf = b""

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self._src.read(n - len(self._buf))
            if not data:
                break
            self._buf += data
        return self._buf[:n]

    def read(self, n: int = -1) -> bytes:
        if self._buf:
            if n < 0:
                data, self._buf = self._buf + self._src.read(), b""
                return data
            data, self._buf = self._buf[:n], self._buf[n:]
            return data
        return self._src.read(n)
