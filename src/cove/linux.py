"""The few Linux system calls Python 3.11's ``os`` lacks (unshare, setns,
mount, pivot_root, sethostname, prctl, capset), through ctypes on libc.

Every wrapper raises ``OSError`` with the errno, like ``os`` functions do, so
callers handle them the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# glibc has no pivot_root wrapper: the raw system call number per machine.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


@cache
def _libc() -> ctypes.CDLL:
    # Loaded on first use, not at import, so importing this module has no
    # side effects; the cache is of an immutable handle.
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc().unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    src = source.encode() if source is not None else None
    fst = fstype.encode() if fstype is not None else None
    opts = data.encode() if data is not None else None
    result = _libc().mount(src, target.encode(), fst, ctypes.c_ulong(flags), opts)
    _check(result, f"mount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(38, f"pivot_root: unsupported machine {os.uname().machine}")
    result = _libc().syscall(ctypes.c_long(number), new_root.encode(), put_old.encode())
    _check(result, "pivot_root")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc().umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc().sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def prctl(option: int, arg: int, arg3: int = 0) -> None:
    libc = _libc()
    result = libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0)
    _check(result, "prctl")


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Sets this thread's capability sets (bit masks by capability number)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def capget_permitted() -> int:
    """This thread's permitted capabilities, as a bit mask."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc().capget(ctypes.byref(header), data), "capget")
    return int(data[0].permitted) | (int(data[1].permitted) << 32)


def seccomp_filter(program: bytes) -> None:
    """Installs a classic BPF program (``struct sock_filter`` array) as this
    thread's seccomp filter; needs no_new_privs or CAP_SYS_ADMIN."""
    prog = _SockFprog(len(program) // 8, program)
    libc = _libc()
    result = libc.prctl(
        ctypes.c_int(PR_SET_SECCOMP),
        ctypes.c_ulong(SECCOMP_MODE_FILTER),
        ctypes.byref(prog),
        0,
        0,
    )
    _check(result, "seccomp")
