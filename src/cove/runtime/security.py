"""What a container's processes may do: Linux capabilities (Docker's default
set, changed by ``--cap-add``/``--cap-drop``), no_new_privs, and a seccomp
filter in the spirit of Docker's default profile.

The pure part (naming capabilities, resolving a set) is used by the API to
validate a request; ``compile_seccomp`` runs in the supervisor or the CLI
before they fork, and ``confine`` runs in the forked child just before
``exec``: it is the last thing a container's init and every ``cove exec``
process do, so both get exactly the same restrictions.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Sequence

from cove import linux
from cove.errors import InvalidArgument

# Numbers from <linux/capability.h>, in order; the kernel's newest is 40.
_CAP_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
CAPABILITIES: dict[str, int] = {name: number for number, name in enumerate(_CAP_NAMES)}

# Docker's default set (moby's oci/caps/defaults.go).
_DEFAULT_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip
DEFAULT_CAPS: frozenset[str] = frozenset(_DEFAULT_NAMES)

_CAP_HINT = "name a capability as CAP_NET_ADMIN or NET_ADMIN (any case), or ALL; known: " + (
    " ".join(_CAP_NAMES)
)


def normalize_cap(text: str) -> str:
    """``net_admin``, ``CAP_NET_ADMIN`` -> ``NET_ADMIN``; ``all`` -> ``ALL``.
    Raises ``InvalidArgument`` for a name the kernel does not know."""
    name = text.strip().upper()
    if name.startswith("CAP_"):
        name = name[4:]
    if name != "ALL" and name not in CAPABILITIES:
        raise InvalidArgument(f"unknown capability {text!r}: {_CAP_HINT}", capability=text)
    return name


def resolve_caps(add: Iterable[str], drop: Iterable[str]) -> frozenset[str]:
    """The set a container gets, as Docker computes it: ``--cap-add ALL``
    grants every capability but the dropped ones; ``--cap-drop ALL`` keeps
    only the added ones; otherwise the defaults minus drops plus adds (an
    add wins over a drop of the same name)."""
    adds = {normalize_cap(c) for c in add}
    drops = {normalize_cap(c) for c in drop}
    if "ALL" in adds:
        return frozenset(set(CAPABILITIES) - drops)
    if "ALL" in drops:
        return frozenset(adds - {"ALL"})
    return frozenset((DEFAULT_CAPS - drops) | adds)


def cap_mask(caps: Iterable[str]) -> int:
    mask = 0
    for name in caps:
        mask |= 1 << CAPABILITIES[name]
    return mask


# -- seccomp ----------------------------------------------------------------

_CLONE_NAMESPACES = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)

# Refused whatever the capabilities: kernel keyrings are not namespaced, and
# the rest are obsolete or reach the whole host.
_ALWAYS_REFUSED = (
    "keyctl", "add_key", "request_key", "open_by_handle_at", "name_to_handle_at",
    "userfaultfd", "lookup_dcookie", "nfsservctl", "uselib", "_sysctl", "vm86",
    "vm86old", "get_kernel_syms", "query_module", "create_module", "swapon", "swapoff",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip

# Allowed only when the container was given one of the capabilities, as in
# Docker's profile: the capability alone is not enough because these calls
# reach kernel state that namespaces do not cover.
_NEEDS_CAP: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("SYS_ADMIN",), ("mount", "umount", "umount2", "pivot_root", "unshare", "setns",
                      "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
                      "mount_setattr", "fanotify_init", "quotactl", "quotactl_fd")),
    (("SYS_ADMIN", "BPF"), ("bpf",)),
    (("SYS_ADMIN", "PERFMON"), ("perf_event_open",)),
    (("SYS_MODULE",), ("init_module", "finit_module", "delete_module")),
    (("SYS_BOOT",), ("reboot", "kexec_load", "kexec_file_load")),
    (("SYS_PACCT",), ("acct",)),
    (("SYS_PTRACE",), ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
                       "pidfd_getfd")),
)  # fmt: skip


def refused_syscalls(caps: frozenset[str]) -> tuple[str, ...]:
    """The system calls the default filter answers with EPERM for a
    container holding ``caps`` (pure; ``clone`` with namespace flags and
    ``clone3`` come on top without CAP_SYS_ADMIN)."""
    out = list(_ALWAYS_REFUSED)
    for needs, calls in _NEEDS_CAP:
        if not caps.intersection(needs):
            out.extend(calls)
    return tuple(out)


def compile_seccomp(caps: frozenset[str]) -> bytes:
    """The default filter as a classic BPF program for ``linux.seccomp_filter``.

    Compiled by libseccomp (through ``pyseccomp``) in the parent, before any
    fork or ``pivot_root``, so the child only hands finished bytes to the
    kernel. Default allow with a deny list, rather than Docker's allow list,
    so programs using newer system calls keep working; 32-bit x86 and x32
    calls get the same rules instead of slipping past them."""
    import pyseccomp  # deferred: it loads libseccomp when imported

    refuse = pyseccomp.ERRNO(errno.EPERM)
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    if pyseccomp.system_arch() == pyseccomp.Arch.X86_64:
        for arch in (pyseccomp.Arch.X86, pyseccomp.Arch.X32):
            with contextlib.suppress(OSError):
                flt.add_arch(arch)
    for name in refused_syscalls(caps):
        # a name this libseccomp or architecture does not know cannot be called
        with contextlib.suppress(OSError, ValueError):
            flt.add_rule(refuse, name)
    if "SYS_ADMIN" not in caps:
        for flag in _CLONE_NAMESPACES:
            flt.add_rule(refuse, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
        # clone3 passes its flags in memory a filter cannot read; ENOSYS makes
        # the C library fall back to clone, whose flags are checked above.
        with contextlib.suppress(OSError, ValueError):
            flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    fd = os.memfd_create("cove-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b") as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()


def confine(caps: frozenset[str], seccomp: bytes | None) -> None:
    """Applies the restrictions to the calling (single-threaded, forked)
    process; call it right before ``exec``. Raises ``OSError``."""
    # Bounding set first: dropping from it needs CAP_SETPCAP, which capset
    # below may remove. EINVAL marks the end of the kernel's capabilities.
    # What the caller lacks cannot be granted (an agent confined itself).
    keep = cap_mask(caps) & linux.capget_permitted()
    for number in range(64):
        if keep & (1 << number):
            continue
        try:
            linux.prctl(linux.PR_CAPBSET_DROP, number)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                break
            raise
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    # Inheritable stays empty, as Docker has done since CVE-2022-24769: a
    # file with inheritable capabilities then gains nothing beyond the set.
    linux.capset(keep, keep, 0)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    if seccomp is not None:
        linux.seccomp_filter(seccomp)


def check_security_opts(opts: Sequence[str]) -> bool:
    """``--security-opt`` values; returns whether seccomp is on. Only
    ``seccomp=unconfined`` (Docker's way out) and ``seccomp=default`` are
    known. Raises ``InvalidArgument``."""
    seccomp = True
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key == "seccomp" and sep and value in ("unconfined", "default"):
            seccomp = value == "default"
            continue
        raise InvalidArgument(
            f"invalid --security-opt {opt!r}: use seccomp=unconfined or seccomp=default",
            option=opt,
        )
    return seccomp
