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
import shutil
import stat
from collections.abc import Sequence

from cove import linux
from cove.runtime.mounts import Kind, Mount
from cove.runtime.volumes import filled_marker

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


# What a container without an image may write: private, empty, per container
# (as systemd's ProtectSystem=strict with PrivateTmp); the rest of the
# host's tree it sees read-only.
PRIVATE_DIRS = (("/tmp", "1777"), ("/var/tmp", "1777"), ("/run", "755"), ("/root", "700"))


def prepare(
    rootfs: str | None,
    etc_dir: str,
    masked: Sequence[str],
    *,
    overlay: tuple[Sequence[str], str] | None = None,
    mounts: Sequence[Mount] = (),
    read_only: bool = False,
) -> str:
    """Mounts before the container's init is forked; returns its root.

    ``overlay`` is (image layer directories, top first; the container's
    directory holding ``upper``, ``work`` and ``root``): the root is then
    an overlayfs of them."""
    if overlay is not None:
        layers, base = overlay
        root = os.path.join(base, "root")
        options = "lowerdir={},upperdir={},workdir={}".format(
            ":".join(layers), os.path.join(base, "upper"), os.path.join(base, "work")
        )
        linux.mount("overlay", root, "overlay", linux.MS_NODEV, options)
    elif rootfs:
        root = rootfs
        # pivot_root needs the new root to be a mount point.
        linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC)
    else:
        root = "/"
    # held open: the directories holding them (the state directory, the
    # host's /tmp) are hidden below
    sources = [os.open(os.path.join(etc_dir, n), os.O_PATH | os.O_CLOEXEC) for n in ETC_FILES]
    binds = [
        os.open(m.source, os.O_PATH | os.O_CLOEXEC) if m.kind is not Kind.TMPFS else -1
        for m in mounts
    ]
    try:
        if root == "/":
            for path in masked:
                cover(path)
            _protect_host()
        _bind_etc(root, sources)
        if root != "/":
            # the container's own (its network namespace's devices), read-only;
            # made in an image's writable layer, not in a user's --rootfs
            sys_dir = secure_join(root, "/sys")
            if overlay is not None:
                os.makedirs(sys_dir, 0o555, exist_ok=True)
            if os.path.isdir(sys_dir):
                linux.mount("sysfs", sys_dir, "sysfs", _RO)
        _apply_mounts(root, mounts, binds)
    finally:
        for fd in sources + binds:
            if fd >= 0:
                os.close(fd)
    if read_only and root != "/":
        linux.mount(None, root, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
                    | _flags_of(root))  # fmt: skip
    elif read_only:
        # --read-only on the host's tree: its private directories too, once
        # the mount points and /etc files in them are made; a --tmpfs or a
        # volume mounted right over one stays writable (Docker's meaning).
        covered = {m.target for m in mounts}
        for path, _ in PRIVATE_DIRS:
            if path not in covered and os.path.isdir(path):
                linux.mount(None, path, None, linux.MS_REMOUNT | linux.MS_BIND
                            | linux.MS_RDONLY | _flags_of(path))  # fmt: skip
    _mount_dev(os.path.join(root, "dev"), host_pts=root == "/")
    return root


def _protect_host() -> None:
    """The host's tree read-only (every mount of it, /sys included), with
    private writable directories over ``PRIVATE_DIRS``."""
    for point in _mounts_under("/", skip_types=("nsfs",)):
        if point == "/proc" or point.startswith("/proc/"):
            continue  # replaced by the container's own /proc
        try:
            _remount_ro(point)
        except FileNotFoundError:
            continue  # a mount point deleted on the host: nothing to reach
    for path, mode in PRIVATE_DIRS:
        if os.path.isdir(path):
            linux.mount(
                "tmpfs", path, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, f"mode={mode},size=65536k"
            )


def _remount_ro(point: str) -> None:
    try:
        flags = _flags_of(point)
    except OSError:
        return  # a mount point it cannot reach is one it cannot reach either
    linux.mount(None, point, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | flags)


def _flags_of(path: str) -> int:
    """The nosuid/nodev/noexec flags of the mount at ``path``, kept when it
    is remounted (dropping them would widen what the container may do)."""
    f = os.statvfs(path).f_flag
    return f & (linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)


def _apply_mounts(root: str, mounts: Sequence[Mount], fds: Sequence[int]) -> None:
    for m, fd in zip(mounts, fds, strict=True):
        target = secure_join(root, m.target)
        if m.kind is Kind.TMPFS:
            _make_point(target, directory=True, host=root == "/")
            flags = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
            if m.readonly:
                flags |= linux.MS_RDONLY
            linux.mount("tmpfs", target, "tmpfs", flags, m.options or "mode=1777")
            continue
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if m.kind is Kind.VOLUME and root != "/":
            _copy_up(target, m.source)
        _make_point(target, directory=is_dir, host=root == "/")
        linux.mount(f"/proc/self/fd/{fd}", target, None, linux.MS_BIND | linux.MS_REC)
        if m.readonly:
            for point in _mounts_under(target):
                _remount_ro(point)
        elif root == "/":
            # a bind copies the flags of its source's mount, read-only here
            linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | _flags_of(target))


def _copy_up(src: str, volume: str) -> None:
    """A new, empty volume mounted over a directory of the container's root
    gets that directory's files first (Docker's copy of the image's
    files into a new volume): contents, modes and owners, symbolic links
    as links (never followed), devices, pipes and sockets left out. Once
    only, at the volume's first mount: a restart finds it marked."""
    marker = filled_marker(volume)
    if os.path.lexists(marker):
        return
    _copy_tree(src, volume)
    with contextlib.suppress(FileExistsError), open(marker, "x"):
        pass


def _copy_tree(src: str, volume: str) -> None:
    if os.listdir(volume) or os.path.islink(src) or not os.path.isdir(src):
        return
    st = os.lstat(src)
    os.chown(volume, st.st_uid, st.st_gid)
    os.chmod(volume, stat.S_IMODE(st.st_mode))
    for folder, dirs, files in os.walk(src):
        out = os.path.join(volume, os.path.relpath(folder, src))
        for name in dirs + files:
            source, dest = os.path.join(folder, name), os.path.join(out, name)
            st = os.lstat(source)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(source), dest)
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(dest, 0o700)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(source, dest, follow_symlinks=False)
            else:
                continue
            os.lchown(dest, st.st_uid, st.st_gid)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(dest, stat.S_IMODE(st.st_mode))


def _make_point(path: str, *, directory: bool, host: bool) -> None:
    if os.path.lexists(path):
        return
    try:
        if directory:
            os.makedirs(path, 0o755)
        else:
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            with open(path, "a"):
                pass
    except OSError as exc:
        if host:
            raise OSError(
                exc.errno, f"mount point {path} does not exist (a container without an image"
                " sees the host's tree read-only)",
            ) from exc  # fmt: skip
        raise


def secure_join(root: str, path: str) -> str:
    """``root/path`` with every symbolic link on the way resolved as the
    container will see it (inside ``root``), so a link in an image cannot
    lead a mount, or a directory made for one, out onto the host."""
    if root == "/":
        return os.path.normpath(path)
    parts = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        full = os.path.join(root, *done, part)
        if os.path.islink(full):
            hops += 1
            if hops > 40:
                raise OSError(40, f"too many levels of symbolic links in {path}")
            link = os.readlink(full)
            if link.startswith("/"):
                done = []
            parts = [p for p in link.split("/") if p and p != "."] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def enter(root: str, pidns: bool, pivot: bool) -> None:
    """In the container's init, inside its PID namespace: a fresh /proc,
    then ``pivot_root`` into ``root`` when ``pivot``."""
    proc = os.path.join(root, "proc")
    if pidns:
        os.makedirs(proc, exist_ok=True)
        linux.mount("proc", proc, "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    null = os.path.join(root, "dev", "null")
    entries = (os.path.join(proc, name) for name in _PROC_READONLY)
    readonly(*(path for path in entries if os.path.lexists(path)))
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


def readonly(*paths: str) -> None:
    """Makes each of ``paths`` and every mount below them read-only (a
    read-only /sys with a writable cgroup tree under it would let a
    container move itself out of its device cgroup). The mount table is
    read once for all of them: on a host with many mounts its parsing is
    most of a container's start-up work."""
    for path in paths:
        if not os.path.lexists(path):
            raise FileNotFoundError(path)
    for path in paths:
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
    for point in _mounts_under(*paths):
        linux.mount(None, point, None, linux.MS_REMOUNT | linux.MS_BIND | _RO)


def _mounts_under(*paths: str, skip_types: tuple[str, ...] = ()) -> list[str]:
    """Mount points at or below any of ``paths``, parents first (mountinfo
    order); ``skip_types``: file system types left out (``nsfs``: namespace
    files bound by other runtimes, which cannot be remounted and hold no
    data)."""
    if not paths:
        return []
    prefixes = tuple(path.rstrip("/") + "/" for path in paths)
    out: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if skip_types and line.split(" - ", 1)[-1].split(" ", 1)[0] in skip_types:
                continue
            point = _unescape(line.split(" ", 5)[4])
            if (point in paths or point.startswith(prefixes)) and point not in out:
                out.append(point)
    return out


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _bind_etc(root: str, sources: Sequence[int]) -> None:
    for name, fd in zip(ETC_FILES, sources, strict=True):
        # a link (/etc/resolv.conf -> /run/...) is followed inside the root;
        # on the host's tree it may end in a private directory, made here
        target = secure_join(root, f"/etc/{name}") if root != "/" else os.path.realpath(
            f"/etc/{name}"
        )  # fmt: skip
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "a"):
                pass
        linux.mount(f"/proc/self/fd/{fd}", target, None, linux.MS_BIND)
        if root == "/":
            # a bind copies the flags of its source's mount, read-only here
            linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | _flags_of(target))


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
