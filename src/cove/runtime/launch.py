"""Starting a container's process tree: fork, enter the container's network
namespace, unshare UTS, IPC, mount and PID namespaces, build its filesystem
view (``fs``: /etc files, /dev, /proc, ``pivot_root`` into its rootfs or
the agent's files hidden), confine it (``security``) and exec its command.

The forked child (A) sets up the namespaces, forks the container's init (B)
and exits at once. The supervisor is a child subreaper, so B is re-parented
to it and its exit status is reaped there: no helper process per container.
B reports a failed exec through a close-on-exec pipe, as ``subprocess`` does,
so "command not found" is an error of ``start`` and not a silent exit 127.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from cove import linux
from cove.errors import LaunchError as LaunchError  # raised here; defined in the one tree
from cove.runtime import devices, fs, resources, security, stdio, users
from cove.runtime.mounts import Mount
from cove.runtime.security import DEFAULT_CAPS
from cove.runtime.stdio import HeldStdio

_SETUP_TIMEOUT = 10.0
_MAX_FD = 1 << 20


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything the supervisor needs to (re)start a container by itself."""

    id: str
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    hostname: str
    netns: str  # "": the supervisor's own (the host's), for --network host
    etc_dir: str  # holds hosts, hostname and resolv.conf to bind
    log_path: str
    rootfs: str | None = None
    workdir: str = "/"
    restart: str = "no"
    pid_namespace: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    caps: frozenset[str] = DEFAULT_CAPS
    seccomp: bool = True
    # the agent's files (state, run and socket directories, secrets): hidden
    # from a container that sees the host's filesystem
    masked: tuple[str, ...] = ()
    stop_signal: str = "SIGTERM"  # what ``stop`` sends first
    user: str = ""  # -u USER[:GROUP], looked up in the container's /etc files
    # from an image: its layer directories (top first) and the container's
    # own directory (overlay upper, work and mount point)
    layers: tuple[str, ...] = ()
    overlay_dir: str = ""
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False
    memory: int = 0  # bytes; 0: no limit
    cpus: float = 0.0  # 0: no limit
    tty: bool = False  # -t: a terminal of the container's own (see ``stdio``)
    interactive: bool = False  # -i: stdin kept open for an attacher
    console_size: tuple[int, int] = (0, 0)  # -t: rows, columns at start

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "argv": list(self.argv),
            "env": dict(self.env),
            "hostname": self.hostname,
            "netns": self.netns,
            "etc_dir": self.etc_dir,
            "log_path": self.log_path,
            "rootfs": self.rootfs,
            "workdir": self.workdir,
            "restart": self.restart,
            "pid_namespace": self.pid_namespace,
            "labels": dict(self.labels),
            "caps": sorted(self.caps),
            "seccomp": self.seccomp,
            "masked": list(self.masked),
            "stop_signal": self.stop_signal,
            "user": self.user,
            "layers": list(self.layers),
            "overlay_dir": self.overlay_dir,
            "mounts": [m.to_json() for m in self.mounts],
            "read_only": self.read_only,
            "memory": self.memory,
            "cpus": self.cpus,
            "tty": self.tty,
            "interactive": self.interactive,
            "console_size": list(self.console_size),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LaunchSpec:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            argv=tuple(str(a) for a in data["argv"]),
            env={str(k): str(v) for k, v in dict(data.get("env") or {}).items()},
            hostname=str(data.get("hostname") or data["name"]),
            netns=str(data["netns"]),
            etc_dir=str(data["etc_dir"]),
            log_path=str(data["log_path"]),
            rootfs=data.get("rootfs") or None,
            workdir=str(data.get("workdir") or "/"),
            restart=str(data.get("restart") or "no"),
            pid_namespace=bool(data.get("pid_namespace", True)),
            labels={str(k): str(v) for k, v in dict(data.get("labels") or {}).items()},
            caps=frozenset(str(c) for c in data["caps"]) if "caps" in data else DEFAULT_CAPS,
            seccomp=bool(data.get("seccomp", True)),
            masked=tuple(str(p) for p in data.get("masked") or ()),
            stop_signal=str(data.get("stop_signal") or "SIGTERM"),
            user=str(data.get("user") or ""),
            layers=tuple(str(p) for p in data.get("layers") or ()),
            overlay_dir=str(data.get("overlay_dir") or ""),
            mounts=tuple(Mount.from_json(m) for m in data.get("mounts") or ()),
            read_only=bool(data.get("read_only")),
            memory=int(data.get("memory") or 0),
            cpus=float(data.get("cpus") or 0.0),
            tty=bool(data.get("tty")),
            interactive=bool(data.get("interactive")),
            console_size=_size(data.get("console_size")),
        )


def spawn(
    spec: LaunchSpec,
    out: tuple[int, int] | None = None,
    held: HeldStdio | None = None,
    *,
    devices_group: str = "",
) -> int:
    """Start the container; returns the host pid of its init process.
    ``out``: the descriptors its stdout and stderr go to (the caller
    keeps and closes them); without, both append to ``spec.log_path``.
    Raises ``LaunchError``. The caller must be a child subreaper (and
    single-threaded: this forks). A container with ``tty`` or
    ``interactive`` needs ``held``, which gets the supervisor's end of its
    stdio: the terminal's master, or the write end of its stdin.
    ``devices_group``: the devices cgroup it is in (``devices.join``), ""
    when it has not joined it."""
    io = stdio.Plan.open(spec.tty, spec.interactive, spec.console_size)
    try:
        pid = _spawn(spec, io, out, devices_group)
        if held is not None:
            io.hand_to(held)
        return pid
    finally:
        io.close()


def _spawn(
    spec: LaunchSpec, io: stdio.Plan, out: tuple[int, int] | None, devices_group: str
) -> int:
    try:
        seccomp = security.compile_seccomp(spec.caps) if spec.seccomp else None
    except (OSError, ImportError) as exc:
        # never start a container without the filter it was meant to have
        raise LaunchError(f"cannot build the seccomp filter: {exc}") from exc
    if out is None:
        log_fd = os.open(
            spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        out = (log_fd, log_fd)
    else:
        log_fd = -1
    r, w = io.report_channel() or os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                os.close(r)
                _setup_and_fork(spec, w, out, seccomp, io, devices_group)
            finally:
                os._exit(126)
        os.close(w)
        w = -1
        report = _read_report(r, io)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    finally:
        os.close(r)
        if log_fd >= 0:
            os.close(log_fd)
        if w >= 0:
            os.close(w)
        io.close_child_ends()
    init_pid: int | None = None
    for line in report.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "pid":
            init_pid = int(rest)
        elif kind == "exec":
            # the init process failed to exec and has exited with 127
            code, _, msg = rest.partition(" ")
            if init_pid is not None:
                _reap(init_pid)
            raise LaunchError(
                f"cannot run {spec.argv[0]!r}: {msg}", missing=int(code) == errno.ENOENT
            )
        elif kind == "error":
            if init_pid is not None:
                _reap(init_pid)
            raise LaunchError(rest)
    if init_pid is None:
        raise LaunchError("container setup failed without a report")
    return init_pid


def _size(value: Any) -> tuple[int, int]:
    rows, cols = value if isinstance(value, list | tuple) and len(value) == 2 else (0, 0)
    return (int(rows), int(cols))


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _read_report(fd: int, io: stdio.Plan) -> str:
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], _SETUP_TIMEOUT)
        if not ready:
            raise LaunchError("container setup timed out")
        data = io.read_report(fd) if io.tty else os.read(fd, 4096)
        if not data:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(data)


def _write(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, text.encode())


def _setup_and_fork(
    spec: LaunchSpec,
    report: int,
    out: tuple[int, int],
    seccomp: bytes | None,
    io: stdio.Plan,
    devices_group: str = "",
) -> NoReturn:  # pragma: no cover
    """Process A: namespaces and mounts, then fork the init and exit."""
    try:
        os.setsid()
        if spec.netns:  # else --network host: the supervisor's, the agent's
            netns = os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC)
            linux.setns(netns, linux.CLONE_NEWNET)
            os.close(netns)
        flags = linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWNS
        pidns = spec.pid_namespace
        try:
            linux.unshare(flags | (linux.CLONE_NEWPID if pidns else 0))
        except OSError:
            if not pidns:
                raise
            pidns = False
            linux.unshare(flags)
        caps = spec.caps if devices.join(joined=devices_group) else spec.caps - {"MKNOD"}
        resources.join(spec.id, resources.Limits(spec.memory, spec.cpus))
        # Private propagation first: nothing mounted below may reach the host.
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        linux.sethostname(spec.hostname)
        overlay = (spec.layers, spec.overlay_dir) if spec.layers else None
        root = fs.prepare(
            spec.rootfs, spec.etc_dir, spec.masked, overlay=overlay, mounts=spec.mounts,
            read_only=spec.read_only,
        )  # fmt: skip
    except OSError as exc:
        _write(report, f"error container setup failed: {exc.strerror or exc}\n")
        os._exit(126)
    pid = os.fork()
    if pid == 0:
        _exec_init(spec, root, caps, report, out, pidns, seccomp, io)
    _write(report, f"pid {pid}\n")
    os._exit(0)


def _exec_init(
    spec: LaunchSpec,
    root: str,
    caps: frozenset[str],
    report: int,
    out: tuple[int, int],
    pidns: bool,
    seccomp: bytes | None,
    io: stdio.Plan,
) -> NoReturn:  # pragma: no cover
    """Process B, the container's init: /proc, pivot_root, confinement, exec."""
    try:
        fs.enter(root, pidns, pivot=root != "/")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out[0], 1)
        os.dup2(out[1], 2)
        io.in_init(report)  # -t: the terminal instead; -i: the stdin pipe
        # Only stdio and the close-on-exec report pipe go on: no descriptor
        # of the supervisor (other containers' pidfds) may reach the command.
        os.closerange(3, report)
        os.closerange(report + 1, _MAX_FD)
        for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        identity = users.lookup(spec.user) if spec.user else None
        if identity is not None and spec.tty:
            os.fchown(0, identity.uid, -1)  # the terminal is its user's, as Docker's
        security.confine(caps, seccomp)
        if identity is not None:
            users.switch(identity)  # after confine: no capability is left
    except LookupError as exc:
        _write(report, f"error cannot run as {spec.user}: {exc}\n")
        os._exit(126)
    except OSError as exc:
        _write(report, f"error container setup failed: {exc.strerror or exc}\n")
        os._exit(126)
    try:
        os.chdir(spec.workdir)
        os.execvpe(spec.argv[0], list(spec.argv), dict(spec.env))
    except OSError as exc:
        _write(report, f"exec {exc.errno or 0} {exc.strerror or exc}\n")
    os._exit(127)
