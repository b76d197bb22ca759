"""What a container may do, tried as an attacker inside one would: Docker's
default capabilities (and --cap-add/--cap-drop), no_new_privs, the seccomp
filter, a rootfs that a chroot escape cannot leave, and the agent's state
and socket out of reach without a rootfs, from the init and from
``cove exec`` alike."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

# Docker's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID
# SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
DOCKER_CAPS = 0x00000000A80425FB
NET_ADMIN = 1 << 12
NET_RAW = 1 << 13

STATUS = "grep -E '^(CapEff|CapBnd|CapPrm|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status"

# The classic chroot escape: chroot into a subdirectory while keeping the
# working directory outside it, climb with "..", chroot there.
ESCAPE_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    mkdir("/.escape", 0700);
    if (chroot("/.escape") != 0) perror("chroot");
    for (int i = 0; i < 64; i++) chdir("..");
    chroot(".");
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { printf("blocked\n"); return 1; }
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("escaped: %s\n", buf);
    return 0;
}
"""

PROBE = """\
import socket, sys
state, sock = sys.argv[1], sys.argv[2]
try:
    with open(state, "rb") as f:
        print("state: read", f.read(16))
except OSError as exc:
    print("state: refused", type(exc).__name__)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sock)
    s.sendall(b"GET /api/containers HTTP/1.0\\r\\n\\r\\n")
    print("socket: answered", s.recv(64))
except OSError as exc:
    print("socket: refused", type(exc).__name__)
"""

# keyctl needs no capability: only the seccomp filter refuses it.
KEYCTL = """\
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall(250, 0, -3, 0, 0)  # keyctl(KEYCTL_GET_KEYRING_ID, session)
print("ok" if r >= 0 else os.strerror(ctypes.get_errno()))
"""


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
    return agent


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.strip().splitlines())


def _caps(status: dict[str, str], key: str) -> int:
    return int(status[key], 16)


def _sleeper(agent: Any, name: str, *extra: str) -> None:
    agent.ok("run", "-d", "--name", name, "--network", "vnet", *extra, "--", "sleep", "600")


def test_docker_default_capabilities_no_new_privs_for_init_and_exec(net: Any) -> None:
    _sleeper(net, "box")
    for who in ("1", "self"):  # the container's init, then the exec'd shell
        status = _status(net.ok("exec", "box", "--", "sh", "-c", STATUS.replace("self", who)))
        assert _caps(status, "CapEff") == DOCKER_CAPS, who
        assert _caps(status, "CapBnd") == DOCKER_CAPS, who
        assert _caps(status, "CapPrm") == DOCKER_CAPS, who
        assert _caps(status, "CapAmb") == 0, who
        assert status["NoNewPrivs"].strip() == "1", who
        assert status["Seccomp"].strip() == "2", who
    info = inspect(net, "box")
    assert "CAP_NET_ADMIN" not in info["capabilities"] and "CAP_CHOWN" in info["capabilities"]
    assert len(info["capabilities"]) == 14

    # no CAP_NET_ADMIN: the container cannot touch its own links
    res = net.cli("exec", "box", "--", "ip", "link", "add", "cvt0", "type", "veth", "peer",
                  "name", "cvt1")  # fmt: skip
    assert res.returncode != 0 and "Operation not permitted" in res.stderr


def test_cap_add_and_cap_drop(net: Any) -> None:
    _sleeper(net, "admin", "--cap-add", "net_admin", "--cap-drop", "CAP_NET_RAW")
    status = _status(net.ok("exec", "admin", "--", "sh", "-c", STATUS))
    want = (DOCKER_CAPS | NET_ADMIN) & ~NET_RAW
    assert _caps(status, "CapEff") == want and _caps(status, "CapBnd") == want
    # the added capability works: a veth pair inside the container's own
    # namespace (it goes away with the container)
    net.ok("exec", "admin", "--", "ip", "link", "add", "cvt0", "type", "veth", "peer", "name",
           "cvt1")  # fmt: skip
    assert "cvt0" in net.ok("exec", "admin", "--", "ip", "-o", "link", "show", "cvt0")
    # the dropped one is gone: no raw sockets
    res = net.cli("exec", "admin", "--", "python3", "-S", "-c",
                  "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)")  # fmt: skip
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    info = inspect(net, "admin")
    assert info["cap_add"] == ["NET_ADMIN"] and info["cap_drop"] == ["NET_RAW"]
    assert "CAP_NET_ADMIN" in info["capabilities"]
    assert "CAP_NET_RAW" not in info["capabilities"]

    # ALL, as Docker reads it
    _sleeper(net, "bare", "--cap-drop", "ALL", "--cap-add", "CHOWN")
    status = _status(net.ok("exec", "bare", "--", "sh", "-c", STATUS))
    assert _caps(status, "CapEff") == 1 and _caps(status, "CapBnd") == 1
    _sleeper(net, "most", "--cap-add", "all", "--cap-drop", "sys_admin")
    status = _status(net.ok("exec", "most", "--", "sh", "-c", STATUS))
    assert _caps(status, "CapEff") & NET_ADMIN and not _caps(status, "CapEff") & (1 << 21)


def test_unknown_capability_is_refused_and_creates_nothing(net: Any) -> None:
    for flag in ("--cap-add", "--cap-drop"):
        res = net.cli("run", "-d", "--name", "bad", flag, "NET_FLY", "--", "true")
        assert res.returncode == 2
        assert "unknown capability 'NET_FLY'" in res.stderr
        assert "CAP_NET_ADMIN or NET_ADMIN" in res.stderr
    res = net.cli("run", "-d", "--name", "bad", "--security-opt", "apparmor=x", "--", "true")
    assert res.returncode == 2 and "seccomp=unconfined" in res.stderr
    assert json.loads(net.ok("ps", "-a", "--format", "json")) == []


def test_seccomp_refuses_with_eperm_unless_unconfined(net: Any, tmp_path: Path) -> None:
    probe = tmp_path / "keyctl.py"
    probe.write_text(KEYCTL)
    _sleeper(net, "filtered")
    _sleeper(net, "open", "--security-opt", "seccomp=unconfined")
    assert net.ok("exec", "filtered", "--", "python3", "-S", str(probe)).strip() == (
        "Operation not permitted"
    )
    assert net.ok("exec", "open", "--", "python3", "-S", str(probe)).strip() == "ok"
    # a user namespace (which needs no capability) is refused too
    res = net.cli("exec", "filtered", "--", "unshare", "-U", "true")
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    # and the init has it, not only exec: its own output
    net.ok("run", "-d", "--name", "init", "--", "python3", "-S", str(probe))
    eventually(lambda: inspect(net, "init")["state"]["status"] == "exited")
    assert net.ok("logs", "init").strip() == "Operation not permitted"
    assert inspect(net, "open")["seccomp"] == "unconfined"


def _static_rootfs(tmp_path: Path) -> Path:
    gcc, busybox = shutil.which("gcc"), shutil.which("busybox")
    if gcc is None or busybox is None:
        pytest.skip("gcc and busybox-static are needed (make install)")
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    source = tmp_path / "escape.c"
    source.write_text(ESCAPE_C)
    subprocess.run([gcc, "-static", "-O1", "-o", str(root / "bin" / "escape"), str(source)],
                   check=True)  # fmt: skip
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "cat", "ls", "grep", "sleep", "mknod", "head"):
        (root / "bin" / applet).symlink_to("busybox")
    return root


def test_chroot_escape_cannot_leave_the_rootfs(net: Any, tmp_path: Path) -> None:
    root = _static_rootfs(tmp_path)
    marker = tmp_path / "host-marker"
    marker.write_text("host secret\n")
    net.ok("run", "-d", "--name", "jail", "--network", "vnet", "--rootfs", str(root), "--",
           "/bin/escape", str(marker))  # fmt: skip
    eventually(lambda: inspect(net, "jail")["state"]["status"] == "exited")
    out = net.ok("logs", "jail")
    assert "host secret" not in out and out.strip() == "blocked"
    assert inspect(net, "jail")["state"]["exit_code"] == 1
    # the same from cove exec, and no host path shows through /proc either
    _sleeper(net, "jail2", "--rootfs", str(root))
    res = net.cli("exec", "jail2", "--", "/bin/escape", str(marker))
    assert res.returncode == 1 and res.stdout.strip() == "blocked"
    res = net.cli("exec", "jail2", "--", "/bin/cat", f"/proc/1/root{marker}")
    assert res.returncode != 0 and "host secret" not in res.stdout
    # the container's own view: its files, a minimal /dev, its /etc files
    assert net.ok("exec", "jail2", "--", "/bin/cat", "/etc/hostname").strip() == "jail2"
    devs = set(net.ok("exec", "jail2", "--", "/bin/ls", "/dev").split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm"} <= devs
    assert not any(d.startswith(("sd", "vd", "nvme", "loop", "mem")) for d in devs)
    assert net.ok("exec", "jail2", "--", "/bin/sh", "-c", "echo x > /dev/null; echo ok") == "ok\n"
    # nothing was left in the rootfs by pivot_root
    assert sorted(p.name for p in root.iterdir()) == [".escape", "bin", "dev", "etc", "proc"]


def test_without_rootfs_the_agent_state_and_socket_are_hidden(net: Any, tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    state_db = net.state_dir / "state.db"
    assert state_db.exists() and net.socket.exists()
    args = ("python3", "-S", str(probe), str(state_db), str(net.socket))
    net.ok("run", "-d", "--name", "thief", "--network", "vnet", "--", *args)
    eventually(lambda: inspect(net, "thief")["state"]["status"] == "exited")
    _sleeper(net, "keeper")
    for out in (net.ok("logs", "thief"), net.ok("exec", "keeper", "--", *args)):
        assert "state: refused" in out and "socket: refused" in out, out
        assert "state: read" not in out and "socket: answered" not in out
    # the host's filesystem is otherwise there (scripts run from it), with
    # the agent's directories empty and read-only, and /sys read-only
    listing = f"ls -A {net.state_dir} {net.socket.parent}; touch {net.state_dir}/x"
    res = net.cli("exec", "keeper", "--", "sh", "-c", listing)
    assert res.returncode != 0 and "Read-only file system" in res.stderr
    assert sorted(res.stdout.split()) == sorted([f"{net.state_dir}:", f"{net.socket.parent}:"])
    for knob in ("/proc/sys/kernel/core_pattern", "/sys/cove-test"):
        res = net.cli("exec", "keeper", "--", "sh", "-c", f"echo 1 > {knob}")
        assert res.returncode != 0 and "Read-only file system" in res.stderr, knob
    # every /proc entry that changes the whole host is mounted read-only
    # (seen in the mount table: writing to them to check could reach the host)
    mounts = net.ok("exec", "keeper", "--", "cat", "/proc/self/mountinfo").splitlines()
    options = {line.split()[4]: line.split()[5].split(",") for line in mounts}
    entries = [e for e in ("sys", "sysrq-trigger", "irq", "bus", "fs") if Path("/proc", e).exists()]
    assert "sys" in entries
    for entry in entries:  # those this kernel has
        assert "ro" in options.get(f"/proc/{entry}", []), entry
    # the host still sees its files
    assert state_db.exists() and not (net.state_dir / "x").exists()


def _host_block_node(state_db: Path, node: Path) -> int:
    """Makes ``node`` for the disk holding the agent's state or, where this
    machine keeps even root from that one, for another block device the
    host can open; returns the device number."""
    candidates = [os.stat(state_db).st_dev]
    for name in sorted(os.listdir("/dev")):
        st = os.stat(f"/dev/{name}")
        if stat.S_ISBLK(st.st_mode):
            candidates.append(st.st_rdev)
    for dev in candidates:
        if os.major(dev) == 0:
            continue  # not a block device (tmpfs, overlay)
        with contextlib.suppress(FileNotFoundError):
            node.unlink()
        os.mknod(node, 0o600 | stat.S_IFBLK, dev)
        with contextlib.suppress(OSError):
            os.close(os.open(node, os.O_RDONLY))
            return dev
    pytest.skip("the host can open no block device here")


def test_a_node_for_a_host_disk_cannot_be_opened(net: Any, tmp_path: Path) -> None:
    # CAP_MKNOD is in the default set; the device cgroup keeps the node shut
    host_node = tmp_path / "host-disk"
    dev = _host_block_node(net.state_dir / "state.db", host_node)
    major, minor = os.major(dev), os.minor(dev)
    root = _static_rootfs(tmp_path)
    _sleeper(net, "jail", "--rootfs", str(root))
    res = net.cli("exec", "jail", "--", "/bin/sh", "-c",
                  f"mknod /disk b {major} {minor} && head -c 512 /disk")  # fmt: skip
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    assert res.stdout == ""
    # without a rootfs: the host's own node, and one made inside (in /dev:
    # the rest of the host's tree is read-only, /tmp and /run are nodev)
    _sleeper(net, "plain")
    for node in (str(host_node), "/dev/inside"):
        script = f"[ -e {node} ] || mknod {node} b {major} {minor}; head -c 512 {node}"
        res = net.cli("exec", "plain", "--", "sh", "-c", script)
        assert res.returncode != 0 and "Operation not permitted" in res.stderr, node
        assert res.stdout == ""
    net.ok("run", "-d", "--name", "init", "--", "head", "-c", "512", str(host_node))
    eventually(lambda: inspect(net, "init")["state"]["status"] == "exited")
    assert inspect(net, "init")["state"]["exit_code"] != 0
    assert "Operation not permitted" in net.cli("logs", "init").stderr  # head's stderr
