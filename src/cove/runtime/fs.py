"""The filesystem a container sees, built inside its private mount namespace
(propagation already private, so nothing here reaches the host).

With a rootfs the container is moved into it with ``pivot_root`` and the
old root is detached, so no path (``..`` after a second chroot, an open
directory, ``/proc/1/root``) leads back to the host, as a chroot allows.
Without one it keeps the host's filesystem, minus the agent's files (an
empty read-only tmpfs or file over each) and with a read-only ``/sys``.
Either way it gets a minimal ``/dev`` (no disks to read the store from)
and a ``/proc`` whose kernel knobs are read-only.

Called only from ``launch``'s forked children; every function raises
``OSError``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence

from cove import linux

ETC_FILES = ("hosts", "hostname", "resolv.conf")

# (name, major, minor), as Docker and the OCI runtime spec create them.
_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
# /proc entries that change the whole host (core_pattern runs a program as
# host root; sysrq reboots it): read-only, as in Docker.
_PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
# /proc entries that leak host memory or kernel state: covered.
_PROC_MASKED = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "acpi", "scsi")

_RO = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def prepare(rootfs: str | None, etc_dir: str, masked: Sequence[str]) -> str:
    """Mounts before the container's init is forked; returns its root."""
    root = rootfs or "/"
    if rootfs:
        # pivot_root needs the new root to be a mount point.
        linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC)
    _bind_etc(root, etc_dir, create=rootfs is not None)
    if not rootfs:
        # after the /etc binds: their sources live in the state directory
        for path in masked:
            cover(path)
        readonly("/sys")
    _mount_dev(os.path.join(root, "dev"), host_pts=not rootfs)
    return root


def enter(root: str, pidns: bool, pivot: bool) -> None:
    """In the container's init, inside its PID namespace: a fresh /proc,
    then ``pivot_root`` into ``root`` when ``pivot``."""
    proc = os.path.join(root, "proc")
    if pidns:
        os.makedirs(proc, exist_ok=True)
        linux.mount("proc", proc, "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    null = os.path.join(root, "dev", "null")
    for name in _PROC_READONLY:
        with contextlib.suppress(FileNotFoundError):
            readonly(os.path.join(proc, name))
    for name in _PROC_MASKED:
        with contextlib.suppress(FileNotFoundError):
            cover(os.path.join(proc, name), null)
    if pivot:
        _pivot(root)


def cover(path: str, null: str = os.devnull) -> None:
    """Hides ``path``: an empty read-only tmpfs over a directory, an empty
    read-only file over anything else. A missing path is left alone."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        linux.mount("tmpfs", path, "tmpfs", _RO, "size=4k,mode=000")
    else:
        linux.mount(null, path, None, linux.MS_BIND)
        linux.mount(None, path, None, linux.MS_REMOUNT | linux.MS_BIND | _RO)


def readonly(path: str) -> None:
    """Makes ``path`` and every mount below it read-only (a read-only
    /sys with a writable cgroup tree under it would let a container move
    itself out of its device cgroup)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
    for point in _mounts_under(path):
        linux.mount(None, point, None, linux.MS_REMOUNT | linux.MS_BIND | _RO)


def _mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``, parents first (mountinfo order)."""
    prefix = path.rstrip("/") + "/"
    out: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = _unescape(line.split(" ", 5)[4])
            if (point == path or point.startswith(prefix)) and point not in out:
                out.append(point)
    return out


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _bind_etc(root: str, etc_dir: str, create: bool) -> None:
    for name in ETC_FILES:
        target = os.path.join(root, "etc", name)
        if create and not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "a"):
                pass
        linux.mount(os.path.join(etc_dir, name), target, None, linux.MS_BIND)


def _mount_dev(dev: str, host_pts: bool) -> None:
    os.makedirs(dev, exist_ok=True)
    # held open across the tmpfs mount below, which hides the host's /dev/pts
    pts_fd = os.open("/dev/pts", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if host_pts else -1
    try:
        linux.mount(
            "tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME, "mode=755,size=65536k"
        )
        _fill_dev(dev, pts_fd)
    finally:
        if pts_fd >= 0:
            os.close(pts_fd)


def _fill_dev(dev: str, pts_fd: int) -> None:
    for name, major, minor in _DEVICES:
        path = os.path.join(dev, name)
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(path, 0o666)  # the umask must not narrow it
    for name, target in _DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    pts = os.path.join(dev, "pts")
    os.mkdir(pts)
    if pts_fd >= 0:
        # A container on the host's tree keeps the host's terminals, so the
        # terminal ``cove exec -t`` hands over still has its name in there.
        linux.mount(f"/proc/self/fd/{pts_fd}", pts, None, linux.MS_BIND)
    else:
        # a terminal of its own is a convenience: a kernel without devpts
        # instances still runs the container
        with contextlib.suppress(OSError):
            linux.mount(
                "devpts", pts, "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620,gid=5",
            )  # fmt: skip
    shm = os.path.join(dev, "shm")
    os.mkdir(shm)
    linux.mount(
        "shm", shm, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
        "mode=1777,size=65536k",
    )  # fmt: skip


def _pivot(root: str) -> None:
    # pivot_root(".", ".") stacks the old root over the new one, so no
    # directory for it is needed in the rootfs (which may be read-only) and
    # nothing is left to remove; detaching it from the old root's fd leaves
    # no mount through which the host's tree could be reached.
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.chdir(root)
        linux.pivot_root(".", ".")
        os.fchdir(old)
        linux.umount(".", linux.MNT_DETACH)
    finally:
        os.close(old)
    os.chdir("/")
