"""The supervisor: one process, separate from the agent, that starts every
container, reaps it, records its exit code and applies its restart policy.

It outlives the agent (its own session; the agent only talks to it over
``<root>/supervisor.sock``), so stopping or killing the agent never touches a
container. As a child subreaper it becomes the parent of every container's
init, so the whole per-container overhead is a record in memory and one file
on disk, not a process. A restarted supervisor adopts running containers
through pidfds (their exit codes are then unknown, recorded as -1).

Requests are one JSON object per line on a fresh connection; the answer is
one JSON line. ``stop`` and ``remove`` answer once the process is gone.

A full disk does not stop it: records it cannot write stay in memory and
are written once space returns, containers keep being reaped and
restarted, and only ``create`` (which must write the spec a restarted
supervisor needs) is refused, with ``storage_full``.

Run as ``python -m cove.runtime.supervisor --root DIR``; it daemonizes and
exits 0 once it serves. It exits by itself, killing its containers, when its
pid file disappears (the state directory was removed) or on ``shutdown``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import itertools
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cove import linux
from cove.errors import LaunchError, storage_error
from cove.runtime import devices
from cove.runtime.launch import LaunchSpec, spawn
from cove.runtime.logpipe import KIND as LOG_KIND
from cove.runtime.logpipe import LogPipes
from cove.runtime.state import (
    ProcessState,
    Status,
    parse_restart,
    process_start_time,
    read_json,
    write_json,
)
from cove.runtime.stdio import ATTACH_OP, TTY_KIND, VIEW_KIND, HeldStdio, Terminals

if TYPE_CHECKING:
    from cove.runtime.dns_keeper import DnsKeeper

log = logging.getLogger(__name__)

SOCKET = "supervisor.sock"
DNS_KEEP_OP = "dns-keep"  # an agent's long-lived connection: see dns_keeper
# An agent's long-lived connection that is sent every state a container
# takes, one JSON line each ({"name": ..., "state": ...}), as it is saved.
WATCH_OP = "watch"
PIDFILE = "supervisor.pid"
_WATCH_INTERVAL = 2.0
_MAX_BACKOFF = 10.0
_STABLE_RUN = 10.0

Reply = Callable[[dict[str, Any]], None]


class Supervisor:
    def __init__(self, root: Path, *, devices_group: str = "") -> None:
        """``devices_group``: the devices cgroup this process joined, as
        ``devices.member_of`` shows it ("" when it did not)."""
        self.root = root
        self.devices_group = devices_group
        self.dir = root / "containers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.specs: dict[str, LaunchSpec] = {}
        self.states: dict[str, ProcessState] = {}
        self.by_pid: dict[int, str] = {}
        self.pidfds: dict[int, str] = {}
        self.waiters: dict[str, list[Reply]] = {}
        self.timers: list[tuple[float, int, str, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.sel = selectors.DefaultSelector()
        self.buffers: dict[int, bytes] = {}
        self.running = True
        self.unsaved: set[str] = set()  # records the disk refused, written later
        self.dns: DnsKeeper | None = None  # when an agent first asks (dns_keeper)
        self.stdio: dict[str, HeldStdio] = {}  # -t/-i containers' ends (runtime.stdio)
        self.logs = LogPipes(self.sel)  # the containers' stdout and stderr
        self.ttys = Terminals(self.sel, self._tty_output)  # -t containers' output
        self.watchers: dict[int, socket.socket] = {}  # WATCH_OP connections by fd

    # -- bookkeeping ---------------------------------------------------------

    def _save(self, state: ProcessState) -> None:
        self.states[state.id] = state
        self._tell_watchers(state)
        path = self.dir / state.id
        if not path.is_dir():
            return
        try:
            write_json(path / "state.json", state.to_json())
        except OSError as exc:
            if not self.unsaved:
                log.error("cannot write container records, keeping them in memory: %s", exc)
            self.unsaved.add(state.id)
            with contextlib.suppress(OSError):
                (path / "state.json.tmp").unlink()
        else:
            self.unsaved.discard(state.id)

    def _tty_output(self, cid: str, data: bytes) -> None:
        spec = self.specs.get(cid)
        if spec is not None:
            self.logs.record(cid, spec.log_path, data)

    def _tell_watchers(self, state: ProcessState) -> None:
        if not self.watchers:
            return
        spec = self.specs.get(state.id)
        data = json.dumps({"name": spec.name if spec else "", "state": state.to_json()})
        line = data.encode() + b"\n"
        for conn in list(self.watchers.values()):
            try:
                # Never blocks the supervision: a watcher that does not read
                # is dropped, and reads every state again when it comes back.
                if conn.send(line) < len(line):
                    raise BlockingIOError
            except OSError:
                self._drop_watcher(conn)

    def _drop_watcher(self, conn: socket.socket) -> None:
        self.watchers.pop(conn.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        conn.close()

    def _save_unsaved(self) -> None:
        for cid in list(self.unsaved):
            state = self.states.get(cid)
            if state is None:
                self.unsaved.discard(cid)
            else:
                self._save(state)
                if cid in self.unsaved:
                    return  # still no space
        log.info("container records written again")

    def _load(self) -> None:
        for path in sorted(self.dir.iterdir()):
            spec_data = read_json(path / "spec.json")
            if spec_data is None:
                shutil.rmtree(path, ignore_errors=True)
                continue
            spec = LaunchSpec.from_json(spec_data)
            state_data = read_json(path / "state.json")
            state = ProcessState.from_json(state_data) if state_data else ProcessState(spec.id)
            self.specs[spec.id] = spec
            self.states[spec.id] = state
            if state.status is Status.RUNNING:
                self._adopt(state)
            elif state.status is Status.RESTARTING:
                self._start(spec.id)

    def _adopt(self, state: ProcessState) -> None:
        if state.pid and process_start_time(state.pid) == state.pid_start:
            try:
                fd = os.pidfd_open(state.pid)
            except OSError:
                fd = -1
            if fd >= 0:
                self.pidfds[fd] = state.id
                self.sel.register(fd, selectors.EVENT_READ, ("pidfd", fd))
                self.logs.adopt(state.id, self.dir / state.id, self.specs[state.id].log_path)
                log.info("adopted container %s (pid %s)", state.id, state.pid)
                return
        self._exited(state.id, -1)

    def _timer(self, delay: float, cid: str, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.seq), cid, fn))

    def _cancel_timers(self, cid: str) -> None:
        self.timers = [t for t in self.timers if t[2] != cid]
        heapq.heapify(self.timers)

    # -- process life --------------------------------------------------------

    def _start(self, cid: str) -> ProcessState:
        spec = self.specs[cid]
        state = self.states[cid]
        if state.status is Status.RUNNING:
            return state
        try:
            try:
                outs = self.logs.open(cid, self.dir / cid, spec.log_path)
                held = self._held(spec)
                self.ttys.forget(cid)  # the last start's master: closed by spawn
                try:
                    pid = spawn(spec, outs, held, devices_group=self.devices_group)
                finally:
                    os.close(outs[0])
                    os.close(outs[1])
                if held is not None and held.tty and held.master >= 0:
                    self.ttys.watch(cid, held.master)
            except OSError as exc:  # its log pipes, say: a failed start, not a crash
                raise LaunchError(f"cannot start the container: {exc}") from exc
        except LaunchError as exc:
            self.logs.drain(cid)
            state = replace(
                state,
                status=Status.EXITED,
                exit_code=127 if exc.missing else 126,
                error=exc.message,
                finished_at=time.time(),
                pid=0,
            )
            self._save(state)
            raise
        self.by_pid[pid] = cid
        state = replace(
            state,
            status=Status.RUNNING,
            pid=pid,
            pid_start=process_start_time(pid),
            started_at=time.time(),
            exit_code=None,
            error="",
            stopped_by_user=False,
        )
        self._save(state)
        log.info("container %s started, pid %s", spec.name, pid)
        return state

    def _exited(self, cid: str, code: int) -> None:
        state = self.states.get(cid)
        if state is None:
            return
        self.logs.drain(cid)  # all it wrote is in its log before its exit shows
        self.ttys.drain(cid)
        now = time.time()
        self._cancel_timers(cid)
        state = replace(state, status=Status.EXITED, exit_code=code, finished_at=now, pid=0)
        spec = self.specs[cid]
        policy, limit = parse_restart(spec.restart)
        within = limit == 0 or state.restart_count < limit
        if not state.stopped_by_user and policy.wants_restart(code) and within:
            quick = now - state.started_at < _STABLE_RUN
            streak = state.restart_count if quick else 0
            delay = min(0.1 * 2 ** min(streak, 10), _MAX_BACKOFF)
            state = replace(state, status=Status.RESTARTING, restart_count=state.restart_count + 1)
            self._timer(delay, cid, lambda: self._restart(cid))
        self._save(state)
        log.info("container %s exited with %s", spec.name, code)
        for reply in self.waiters.pop(cid, []):
            reply({"ok": True, "state": state.to_json()})

    def _restart(self, cid: str) -> None:
        if cid in self.specs and self.states[cid].status is Status.RESTARTING:
            with contextlib.suppress(LaunchError):
                self._start(cid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            cid = self.by_pid.pop(pid, None)
            if cid is not None:
                code = os.waitstatus_to_exitcode(status)
                self._exited(cid, code if code >= 0 else 128 - code)

    def _signal(self, cid: str, sig: int) -> None:
        pid = self.states[cid].pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # -- requests ------------------------------------------------------------

    def handle(self, req: dict[str, Any], reply: Reply) -> None:
        op = req.get("op")
        cid = str(req.get("id", ""))
        if op == "ping":
            reply({"ok": True, "pid": os.getpid()})
        elif op == "shutdown":
            self._quit()
            reply({"ok": True})
        elif op == "list":
            ids = req.get("ids")
            wanted: Iterable[ProcessState] = self.states.values()
            if isinstance(ids, list):
                wanted = [self.states[i] for i in ids if i in self.states]
            reply({"ok": True, "states": [s.to_json() for s in wanted]})
        elif op == "create":
            spec = LaunchSpec.from_json(req["spec"])
            folder = self.dir / spec.id
            try:
                folder.mkdir(exist_ok=True)
                write_json(folder / "spec.json", spec.to_json())
            except OSError as exc:
                if spec.id not in self.specs:
                    shutil.rmtree(folder, ignore_errors=True)
                err = storage_error(exc, str(self.dir), f"cannot create container {spec.name}")
                reply({"ok": False, **err.to_json()})
                return
            self.specs[spec.id] = spec
            self._save(self.states.get(spec.id) or ProcessState(spec.id))
            reply({"ok": True, "state": self.states[spec.id].to_json()})
        elif cid not in self.specs:
            reply({"ok": False, "kind": "not_found", "error": f"no container {cid}"})
        elif op == "start":
            self._cancel_timers(cid)
            try:
                state = self._start(cid)
            except LaunchError as exc:
                kind = "invalid_argument" if exc.missing else "internal"
                # what the exit status of `cove run` is, as Docker's: 127 or 126
                launch = {"launch": "not_found" if exc.missing else "cannot_run"}
                reply({"ok": False, "kind": kind, "error": exc.message, "details": launch})
                return
            reply({"ok": True, "state": state.to_json()})
        elif op in ("stop", "remove"):
            self._stop(cid, float(req.get("timeout", 10.0)), op == "remove", reply)
        elif op == "kill":
            self._signal(cid, int(req.get("signal", signal.SIGKILL)))
            reply({"ok": True})
        else:
            reply({"ok": False, "kind": "invalid_argument", "error": f"unknown op {op!r}"})

    def _stop(self, cid: str, timeout: float, remove: bool, reply: Reply) -> None:
        state = replace(self.states[cid], stopped_by_user=True)
        self._save(state)
        self._cancel_timers(cid)

        def done(answer: dict[str, Any]) -> None:
            if remove:
                self.logs.close(cid)
                self.specs.pop(cid, None)
                self.states.pop(cid, None)
                self.ttys.forget(cid)
                held = self.stdio.pop(cid, None)
                if held is not None:
                    held.close()
                shutil.rmtree(self.dir / cid, ignore_errors=True)
            reply(answer)

        if state.status is not Status.RUNNING:
            if state.status is Status.RESTARTING:
                self._save(replace(state, status=Status.EXITED))
            done({"ok": True, "state": self.states[cid].to_json()})
            return
        self.waiters.setdefault(cid, []).append(done)
        if remove or timeout <= 0:
            self._signal(cid, signal.SIGKILL)
        else:
            self._signal(cid, _stop_signal(self.specs[cid].stop_signal))
            self._timer(timeout, cid, lambda: self._signal(cid, signal.SIGKILL))

    # -- loop ----------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self._quit())
        self.sel.register(rfd, selectors.EVENT_READ, ("signal", rfd))
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, ("listen", listener))
        self._load()
        self._reap()
        next_watch = time.monotonic() + _WATCH_INTERVAL
        while self.running:
            now = time.monotonic()
            deadline = min(next_watch, self.timers[0][0] if self.timers else next_watch)
            for key, _ in self.sel.select(max(0.0, deadline - now)):
                kind, obj = key.data
                if kind == "signal":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(rfd, 512):
                            pass
                    self._reap()
                elif kind == "listen":
                    self._accept(obj)
                elif kind == "conn":
                    self._read(obj)
                elif kind == WATCH_OP:
                    self._drop_watcher(obj)  # it closed (or spoke out of turn)
                elif kind == LOG_KIND:
                    self.logs.on_readable(obj)
                elif kind == TTY_KIND:
                    self.ttys.on_readable(obj)
                elif kind == VIEW_KIND:
                    self.ttys.on_view(obj)
                elif kind == "pidfd":
                    self.sel.unregister(obj)
                    os.close(obj)
                    cid = self.pidfds.pop(obj)
                    self._exited(cid, -1)
                elif kind.startswith("dns-") and self.dns is not None:
                    self.dns.on_event(kind, obj)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, _, fn = heapq.heappop(self.timers)
                fn()
            if now >= next_watch:
                next_watch = now + _WATCH_INTERVAL
                if self.unsaved:
                    self._save_unsaved()
                if self.dns is not None:
                    self.dns.tick()
                if not self._still_wanted():
                    log.warning("pid file gone: stopping every container and exiting")
                    self._quit()
        self._kill_all()

    def _still_wanted(self) -> bool:
        try:
            return int((self.root / PIDFILE).read_text()) == os.getpid()
        except (OSError, ValueError):
            return False

    def _quit(self) -> None:
        self.running = False

    def _kill_all(self) -> None:
        for cid in list(self.states):
            self._signal(cid, signal.SIGKILL)

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            conn, _ = listener.accept()
            conn.setblocking(False)
            self.sel.register(conn, selectors.EVENT_READ, ("conn", conn))
            self.buffers[conn.fileno()] = b""

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        fd = conn.fileno()
        if not data:
            self._close(conn)
            return
        buf = self.buffers.get(fd, b"") + data
        if b"\n" not in buf:
            self.buffers[fd] = buf
            return
        line, _, _ = buf.partition(b"\n")
        self.buffers[fd] = b""
        self.sel.unregister(conn)

        def reply(answer: dict[str, Any]) -> None:
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.sendall(json.dumps(answer).encode() + b"\n")
            conn.close()

        try:
            req = json.loads(line)
            if isinstance(req, dict) and req.get("op") == ATTACH_OP:
                self._attach(conn, str(req.get("id", "")), reply, bool(req.get("backlog")))
                return
            if isinstance(req, dict) and req.get("op") == DNS_KEEP_OP:
                if self.dns is None:
                    from cove.runtime.dns_keeper import DnsKeeper

                    self.dns = DnsKeeper(self.sel, self.root)
                self.dns.attach(conn)  # a long-lived connection: see dns_keeper
                return
            if isinstance(req, dict) and req.get("op") == WATCH_OP:
                conn.sendall(b'{"ok": true}\n')  # a few bytes to an empty buffer
                conn.setblocking(False)
                self.watchers[conn.fileno()] = conn
                self.sel.register(conn, selectors.EVENT_READ, (WATCH_OP, conn))
                return
            self.handle(req, reply)
        except (ValueError, KeyError, TypeError) as exc:
            reply({"ok": False, "kind": "invalid_argument", "error": f"bad request: {exc}"})
        except OSError as exc:
            # One request failing on the system must not end the supervision
            # of every container.
            log.exception("request %r failed", line[:200])
            reply({"ok": False, "kind": "internal", "error": f"the supervisor failed: {exc}"})

    def _held(self, spec: LaunchSpec) -> HeldStdio | None:
        """Where a -t/-i container's start leaves the supervisor's end."""
        if not (spec.tty or spec.interactive):
            return None
        return self.stdio.setdefault(spec.id, HeldStdio(spec.tty))

    def _attach(self, conn: socket.socket, cid: str, reply: Reply, backlog: bool) -> None:
        """``attach``: the held ends of ``cid``'s stdio go to the client
        with a first line (with -t: a duplicate of the master, to write and
        resize, and the channel its output comes on, from the backlog when
        ``backlog``); a second line is its state once it exits."""
        if cid not in self.specs:
            reply({"ok": False, "kind": "not_found", "error": f"no container {cid}"})
            return
        spec, state = self.specs[cid], self.states[cid]
        held = self.stdio.get(cid)
        fds = held.handover() if held is not None else []

        def dropped(why: str) -> None:
            with contextlib.suppress(ValueError):
                self.waiters.get(cid, []).remove(reply)
            reply({"ok": False, "kind": "unavailable", "error": why})

        if fds and spec.tty and self.ttys.has(cid):
            fds.append(self.ttys.view(cid, dropped, backlog))
        head = {"ok": True, "tty": spec.tty, "stdin": bool(fds) and not spec.tty}
        try:
            conn.setblocking(True)
            socket.send_fds(conn, [json.dumps(head).encode() + b"\n"], fds)
        except OSError:
            conn.close()
            return
        finally:
            for fd in fds:
                os.close(fd)
        if state.status is Status.RUNNING:
            self.waiters.setdefault(cid, []).append(reply)
        else:
            reply({"ok": True, "state": state.to_json()})

    def _close(self, conn: socket.socket) -> None:
        self.buffers.pop(conn.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cove-supervisor")
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    root: Path = args.root
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock_path = root / SOCKET
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Whoever binds a fresh socket owns the root; a live supervisor answers.
    with contextlib.suppress(OSError):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(sock_path))
        probe.close()
        return 0
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    try:
        listener.bind(str(sock_path))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return 0
        raise
    os.chmod(sock_path, 0o600)
    listener.listen(128)
    child = os.fork()
    if child != 0:
        # The caller's child returns once the socket accepts, and says why
        # when the supervisor cannot run (its pid file is its lease on root).
        try:
            _write_pid(root / PIDFILE, child)
        except OSError as exc:
            os.kill(child, signal.SIGKILL)
            err = storage_error(exc, str(root), f"cannot write {root / PIDFILE}")
            sys.stderr.write(err.message + "\n")
            os._exit(1)
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    logfd = os.open(root / "supervisor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    # In the containers' devices group from now on, so that each container's
    # process is born there instead of being moved (``devices.join``): the
    # supervisor opens no device beyond what a container may.
    devices_group = ""
    try:
        if devices.join():
            devices_group = devices.member_of()
    except OSError as exc:
        log.warning("cannot join the devices group; each container will: %s", exc)
    sup = Supervisor(root, devices_group=devices_group)
    try:
        sup.serve(listener)
    finally:
        with contextlib.suppress(OSError, ValueError):
            if int((root / PIDFILE).read_text()) == os.getpid():
                # Kept (a "-", no pid), not removed: the next supervisor
                # rewrites it in place, which needs no free space, so a full
                # disk does not keep it from starting.
                _write_pid(root / PIDFILE, None)
                sock_path.unlink()
    return 0


def _write_pid(path: Path, pid: int | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        data = b"-" if pid is None else str(pid).encode()
        # Overwrite, then cut: an existing file's page is reused.
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _stop_signal(name: str) -> int:
    try:
        return int(signal.Signals[name])
    except KeyError:
        return int(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
