"""Containers through a real agent in a host namespace of its own: run,
exec, names, traffic, published ports, lifecycle, connect/disconnect and
bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    assert_no_leaks,
    eventually,
    host_veths,
    inspect,
    need_containers,
    netns_files,
    run_echo,
    runtime_cleanup_fixture,
    scripts_fixture,
    tcp,
    udp,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
    return agent


def test_containers_reach_each_other_by_tcp_and_udp_and_know_their_name(
    net: Any, scripts: tuple[str, str]
) -> None:
    echo, client = scripts
    run_echo(net, "redis", echo, "--network", "vnet", "-e", "GREETING=hi", "--label", "tier=db")
    net.ok("run", "-d", "--name", "web", "--network", "vnet", "--", "sleep", "600")
    redis = address(net, "redis", "vnet")
    web = address(net, "web", "vnet")
    assert redis != web

    got = net.cli("exec", "web", "--", "getent", "hosts", "web")
    assert got.returncode == 0 and got.stdout.split() == [web, "web"]
    assert net.ok("exec", "web", "--", "hostname").strip() == "web"
    resolv = net.ok("exec", "web", "--", "cat", "/etc/resolv.conf")
    assert "nameserver 10.89.0.1" in resolv
    assert net.ok("exec", "redis", "--", "printenv", "GREETING").strip() == "hi"

    out = eventually(
        lambda: net.ok("exec", "web", "--", "python3", "-S", client, "tcp", "7", redis)
    )
    assert out.strip() == "redis:ping"
    out = net.ok("exec", "web", "--", "python3", "-S", client, "udp", "7", redis)
    assert out.strip() == "redis:ping"

    # eth0 with the network's MTU, default route via the gateway
    route = net.ok("exec", "web", "--", "ip", "route", "show", "default")
    assert "via 10.89.0.1 dev eth0" in route
    assert "mtu 1500" in net.ok("exec", "web", "--", "ip", "link", "show", "eth0")

    # the bind-mounted /etc files stay inside the container's mount namespace
    with open("/proc/self/mountinfo") as f:
        assert not any("/containers/" in line and "/etc/" in line for line in f)

    ps = json.loads(net.ok("ps", "--format", "json"))
    assert {c["name"] for c in ps} == {"redis", "web"}
    info = inspect(net, "redis")
    assert info["labels"] == {"tier": "db"} and info["state"]["status"] == "running"
    assert "listening on 7" in net.ok("logs", "redis")


def test_published_ports_from_loopback_host_address_and_other_networks(
    net: Any, scripts: tuple[str, str]
) -> None:
    echo, client = scripts
    net.ok("network", "create", "other", "--subnet", "10.89.1.0/24")
    run_echo(net, "srv", echo, "--network", "vnet", "-p", "18080:7", "-p", "18053:7/udp")
    net.ok("run", "-d", "--name", "peer", "--network", "other", "--", "sleep", "600")
    net.ok("run", "-d", "--name", "near", "--network", "vnet", "--", "sleep", "600")

    assert eventually(lambda: tcp("127.0.0.1", 18080)) == "srv:ping"
    assert udp("127.0.0.1", 18053) == "srv:ping"
    # 10.89.1.1 is one of the host's own addresses (the other bridge's gateway)
    assert tcp("10.89.1.1", 18080) == "srv:ping"
    assert udp("10.89.1.1", 18053) == "srv:ping"
    # hairpin: a container on another network, and one on the same network,
    # through the host's address
    for who in ("peer", "near"):
        out = net.ok("exec", who, "--", "python3", "-S", client, "tcp", "18080", "10.89.1.1")
        assert out.strip() == "srv:ping"
        out = net.ok("exec", who, "--", "python3", "-S", client, "udp", "18053", "10.89.0.1")
        assert out.strip() == "srv:ping"
    # isolation still holds without the published port
    srv = address(net, "srv", "vnet")
    res = net.cli("exec", "peer", "--", "python3", "-S", client, "tcp", "7", srv)
    assert res.returncode != 0

    net.ok("rm", "-f", "srv")
    with pytest.raises(OSError):
        tcp("127.0.0.1", 18080, timeout=1)


def test_published_ports_on_ipv6_from_host_and_other_networks(
    net: Any, scripts: tuple[str, str]
) -> None:
    echo, client = scripts
    # The host's own IPv6 address, on a link of the test's host namespace
    # (removed with it); nodad: usable at once.
    for cmd in (
        ["ip", "link", "add", "cvd6", "type", "veth", "peer", "name", "cvd6p"],
        ["ip", "-6", "addr", "add", "fd00:99::1/64", "dev", "cvd6", "nodad"],
        ["ip", "link", "set", "cvd6", "up"],
    ):
        subprocess.run(cmd, check=True)
    net.ok("network", "create", "six", "--ipv6", "--subnet", "10.89.2.0/24",
           "--subnet", "fd00:89:2::/64")  # fmt: skip
    net.ok("network", "create", "other6", "--ipv6", "--subnet", "10.89.3.0/24",
           "--subnet", "fd00:89:3::/64")  # fmt: skip
    run_echo(net, "srv", echo, "--network", "six", "-p", "18180:7", "-p", "18153:7/udp",
             "-p", "[fd00:99::1]:18181:7", "-p", "[fd00:99::1]:18154:7/udp")  # fmt: skip
    net.ok("run", "-d", "--name", "peer", "--network", "other6", "--", "sleep", "600")
    net.ok("run", "-d", "--name", "near", "--network", "six", "--", "sleep", "600")

    # from the host: both families without a host IP, IPv6 only with one
    assert eventually(lambda: tcp("fd00:99::1", 18180)) == "srv:ping"
    assert udp("fd00:99::1", 18153) == "srv:ping"
    assert tcp("127.0.0.1", 18180) == "srv:ping"
    assert tcp("fd00:89:3::1", 18180) == "srv:ping"  # another bridge's gateway
    assert tcp("fd00:99::1", 18181) == "srv:ping"
    assert udp("fd00:99::1", 18154) == "srv:ping"
    with pytest.raises(OSError):
        tcp("10.89.3.1", 18181, timeout=1)
    # ::1 is not published: refused at once rather than dropped
    with pytest.raises(ConnectionRefusedError):
        tcp("::1", 18180, timeout=2)
    # hairpin over IPv6: from another network and from the same one
    for who in ("peer", "near"):
        for proto, port in (("tcp", "18180"), ("udp", "18153"), ("tcp", "18181")):
            out = net.ok("exec", who, "--", "python3", "-S", client, proto, port, "fd00:99::1")
            assert out.strip() == "srv:ping", (who, proto, port)

    # an IPv6 host IP needs an IPv6 address in the container; bad brackets
    before = (host_veths(), netns_files(net))
    for extra, words in (
        (["--network", "vnet", "-p", "[fd00:99::1]:18182:7"], "no IPv6 address on network vnet"),
        (["--network", "six", "-p", "[fd00:99::1:18182:7"], "missing ']'"),
        (["--network", "six", "-p", "fd00:99::1:18182:7"], "in brackets"),
        (["--network", "six", "-p", "[::1]:18182:7"], "::1 cannot be published"),
        (["--network", "six", "-p", "[fd00:98::1]:18182:7"], "not an address of this host"),
        (["--network", "six", "-p", "[fd00:99::1]:18180:7"], "already published by srv"),
    ):
        res = net.cli("run", "-d", *extra, "--", "python3", "-S", echo, "7")
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0 and len(lines) == 1 and words in lines[0], (extra, res.stderr)
    assert (host_veths(), netns_files(net)) == before
    assert len(json.loads(net.ok("ps", "-a", "--format", "json"))) == 3

    net.ok("rm", "-f", "srv")
    with pytest.raises(OSError):
        tcp("fd00:99::1", 18180, timeout=1)


def test_bad_input_is_a_one_line_error_and_creates_nothing(
    net: Any, scripts: tuple[str, str], tmp_path: Path
) -> None:
    echo, _ = scripts
    net.ok("run", "-d", "--name", "taken", "--network", "vnet", "--ip", "10.89.0.50", "--",
           "sleep", "600")  # fmt: skip
    holder = socket.socket()
    holder.bind(("0.0.0.0", 18090))
    holder.listen()
    before = (host_veths(), netns_files(net))
    cases = [
        (["--network", "nope"], "network nope not found"),
        (["--network", "vnet", "--rootfs", str(tmp_path / "missing")], "rootfs"),
        (["--network", "vnet", "--name", "taken"], "already exists"),
        (["--network", "vnet", "--ip", "10.99.0.5"], "10.99.0.5"),
        (["--network", "vnet", "--ip", "10.89.0.50"], "10.89.0.50"),
        (["--network", "vnet", "-p", "18090:7"], "in use"),
        (["--network", "vnet", "-p", "80:80/sctp"], "invalid port spec"),
        (["--network", "vnet", "-p", "99999:1"], "port"),
    ]
    try:
        for extra, words in cases:
            res = net.cli("run", "-d", *extra, "--", "python3", "-S", echo, "7")
            assert res.returncode != 0, extra
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and words in lines[0], (extra, res.stderr)
        res = net.cli("run", "-d", "--network", "vnet", "--", "no-such-command-here")
        assert res.returncode != 0 and "no-such-command-here" in res.stderr
    finally:
        holder.close()
    assert (host_veths(), netns_files(net)) == before
    assert_no_leaks(net, 1)


def test_lifecycle_exit_codes_restart_policies_and_rm(net: Any, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    net.ok("run", "-d", "--name", "three", "--network", "vnet", "--", "sh", "-c", "exit 3")
    state = eventually(lambda: (s := inspect(net, "three")["state"])["status"] == "exited" and s)
    assert state["exit_code"] == 3
    assert "three" not in net.ok("ps", "--format", "{{.Name}}").split()
    assert "three" in net.ok("ps", "-a", "--format", "{{.Name}}").split()

    # on-failure: fails twice, then succeeds and stays exited
    script = f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; " \
             "[ $n -ge 3 ]"  # fmt: skip
    # the counter is on the host, shared through -v (the host's tree is read-only)
    net.ok("run", "-d", "--name", "flaky", "--restart", "on-failure", "-v",
           f"{tmp_path}:{tmp_path}", "--", "sh", "-c", script)  # fmt: skip
    state = eventually(
        lambda: (s := inspect(net, "flaky")["state"])["status"] == "exited" and s, timeout=20
    )
    assert state["exit_code"] == 0 and state["restart_count"] == 2

    net.ok("run", "-d", "--name", "forever", "--restart", "always", "--", "sh", "-c", "sleep 0.2")
    eventually(lambda: inspect(net, "forever")["state"]["restart_count"] >= 2, timeout=20)
    net.ok("stop", "-t", "1", "forever")
    assert inspect(net, "forever")["state"]["status"] == "exited"

    net.ok("run", "-d", "--name", "svc", "--network", "vnet", "--", "sleep", "600")
    pid = inspect(net, "svc")["state"]["pid"]
    res = net.cli("rm", "svc")
    assert res.returncode != 0 and "running" in res.stderr
    net.ok("stop", "-t", "0.5", "svc")
    assert inspect(net, "svc")["state"]["status"] == "exited"
    net.ok("start", "svc")
    assert inspect(net, "svc")["state"]["pid"] != pid
    assert inspect(net, "svc")["state"]["status"] == "running"
    # the process killed from outside: rm still removes everything
    os.kill(inspect(net, "svc")["state"]["pid"], signal.SIGKILL)
    eventually(lambda: inspect(net, "svc")["state"]["status"] == "exited")
    for name in ("svc", "three", "flaky", "forever"):
        net.ok("rm", name)
    assert_no_leaks(net, 0)


def test_connect_and_disconnect_a_running_container(net: Any, scripts: tuple[str, str]) -> None:
    echo, client = scripts
    net.ok("network", "create", "back", "--subnet", "10.89.2.0/24")
    run_echo(net, "db", echo, "--network", "back")
    net.ok("run", "-d", "--name", "app", "--network", "vnet", "--", "sleep", "600")
    db = address(net, "db", "back")
    assert net.cli("exec", "app", "--", "python3", "-S", client, "tcp", "7", db).returncode != 0

    net.ok("network", "connect", "back", "app", "--alias", "frontend", "--ip", "10.89.2.77")
    assert address(net, "app", "back") == "10.89.2.77"
    link = net.ok("exec", "app", "--", "ip", "-o", "-4", "addr", "show", "eth1")
    assert "10.89.2.77/24" in link
    out = net.ok("exec", "app", "--", "python3", "-S", client, "tcp", "7", db)
    assert out.strip() == "db:ping"
    assert "10.89.2.77" in net.ok("exec", "app", "--", "getent", "hosts", "app")
    # the default route stays on the first network
    assert "via 10.89.0.1" in net.ok("exec", "app", "--", "ip", "route", "show", "default")

    net.ok("network", "disconnect", "back", "app")
    assert net.cli("exec", "app", "--", "ip", "link", "show", "eth1").returncode != 0
    assert net.cli("exec", "app", "--", "python3", "-S", client, "tcp", "7", db).returncode != 0
    assert "back" not in inspect(net, "app")["endpoints"]
    res = net.cli("network", "disconnect", "back", "app")
    assert res.returncode != 0
    net.ok("rm", "-f", "db")
    net.ok("rm", "-f", "app")
    assert host_veths() == set()


def _copy_with_libs(binary: str, root: Path) -> None:
    """A binary and the shared libraries ``ldd`` names, at the same paths."""
    paths = [binary]
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    for line in out.splitlines():
        for part in line.split():
            if part.startswith("/"):
                paths.append(part)
    for src in paths:
        dest = root / src.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(src), dest)


def test_rootfs_runs_inside_the_directory(net: Any, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "proc").mkdir(parents=True)
    (root / "marker").write_text("inside the rootfs\n")
    _copy_with_libs("/usr/bin/cat", root)
    net.ok("run", "-d", "--name", "jail", "--network", "vnet", "--rootfs", str(root), "--",
           "/usr/bin/cat", "/marker", "/etc/hostname")  # fmt: skip
    eventually(lambda: inspect(net, "jail")["state"]["status"] == "exited")
    assert inspect(net, "jail")["state"]["exit_code"] == 0
    assert net.ok("logs", "jail") == "inside the rootfs\njail\n"
    res = net.cli("run", "-d", "--rootfs", str(root), "--", "/usr/bin/ls")
    assert res.returncode != 0 and "not found" in res.stderr


def test_exec_interactive_and_tty_and_logs_follow(net: Any) -> None:
    net.ok("run", "-d", "--name", "box", "--network", "vnet", "-e", "WHO=box", "--",
           "sleep", "600")  # fmt: skip
    # -i: stdin reaches the command; the container's environment is there
    res = net.cli("exec", "-i", "box", "--", "sh", "-c", "cat; echo $WHO", input="hello\n")
    assert res.returncode == 0 and res.stdout == "hello\nbox\n"
    # without -i stdin is closed
    res = net.cli("exec", "box", "--", "cat", input="ignored\n")
    assert res.returncode == 0 and res.stdout == ""
    # the exit code of the command is exec's
    assert net.cli("exec", "box", "--", "sh", "-c", "exit 7").returncode == 7
    # -t: the command gets the caller's terminal
    primary, secondary = os.openpty()
    try:
        proc = subprocess.run(
            [*net_cli(net), "exec", "-i", "-t", "box", "--", "sh", "-c", "test -t 0 && tty"],
            stdin=secondary, stdout=secondary, stderr=subprocess.PIPE, env=net.env, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert os.read(primary, 4096).decode().strip().startswith("/dev/pts/")
    finally:
        os.close(primary)
        os.close(secondary)

    # logs -f follows the output until the container exits
    net.ok("run", "-d", "--name", "talker", "--", "sh", "-c",
           "for i in 1 2 3; do echo line $i; sleep 0.3; done")  # fmt: skip
    res = net.cli("logs", "-f", "talker", timeout=30)
    assert res.returncode == 0 and res.stdout == "line 1\nline 2\nline 3\n"


def net_cli(agent: Any) -> list[str]:
    import agentproc

    return list(agentproc.COVE)


def _to_old_layout(db: Path) -> None:
    """Rewrite the agent's SQLite store as an agent before per-node keys
    wrote it: ``containers/<name>`` without a name claim,
    ``cluster/status/<id>``, ``endpoints/<network>/<id>`` without labels
    or node, no layout mark."""
    from cove.clock import SystemClock
    from cove.store.base import Delete, Put
    from cove.store.sqlite import SqliteStore

    store = SqliteStore(str(db), SystemClock())
    try:
        ops: list[Any] = []
        for kv in store.range("containers/").kvs:
            ops += [Delete(kv.key), Put("containers/" + kv.key.rsplit("/", 1)[1], kv.value)]
        for kv in store.range("cluster/status/").kvs:
            ops += [Delete(kv.key), Put("cluster/status/" + kv.key.rsplit("/", 1)[1], kv.value)]
        ops += [Delete(kv.key) for kv in store.range("cluster/names/").kvs]
        ops += [Delete(kv.key) for kv in store.range("cluster/layout/").kvs]
        for kv in store.range("endpoints/").kvs:
            data = json.loads(kv.value)
            data.pop("labels", None)
            data.pop("node", None)
            old = f"endpoints/{data['network']}/{data['id']}"
            ops += [Delete(kv.key), Put(old, json.dumps(data).encode())]
        assert store.txn([], ops).succeeded
    finally:
        store.close()


def _keys(db: Path, prefix: str) -> list[str]:
    from cove.clock import SystemClock
    from cove.store.sqlite import SqliteStore

    store = SqliteStore(str(db), SystemClock())
    try:
        return [kv.key for kv in store.range(prefix).kvs]
    finally:
        store.close()


def _records(db: Path, prefix: str) -> dict[str, Any]:
    from cove.clock import SystemClock
    from cove.store.sqlite import SqliteStore

    store = SqliteStore(str(db), SystemClock())
    try:
        return {kv.key: json.loads(kv.value) for kv in store.range(prefix).kvs}
    finally:
        store.close()


def test_records_of_the_layout_before_per_node_keys_are_moved_at_start(net: Any) -> None:
    net.ok("run", "-d", "--name", "keep", "--network", "vnet", "--label", "tier=db",
           "--", "sleep", "600")  # fmt: skip
    net.ok("run", "-d", "--name", "drop", "--network", "vnet", "--", "sleep", "600")
    node = inspect(net, "keep")["node"]
    db = net.state_dir / "state.db"
    net.stop()
    assert _keys(db, "containers/") == [f"containers/{node}/drop", f"containers/{node}/keep"]
    _to_old_layout(db)
    assert _keys(db, "containers/") == ["containers/drop", "containers/keep"]
    assert all(k.count("/") == 2 for k in _keys(db, "endpoints/"))
    assert _keys(db, "cluster/layout/") == []

    net.start()
    ps = json.loads(net.ok("ps", "--format", "json"))
    assert {c["name"]: c["state"]["status"] for c in ps} == {"keep": "running", "drop": "running"}
    info = inspect(net, "keep")
    assert info["labels"] == {"tier": "db"} and info["state"]["status"] == "running"
    net.ok("rm", "-f", "drop")
    assert net.cli("inspect", "drop").returncode != 0
    # The name is free again, and taken once more by a new run.
    net.ok("run", "-d", "--name", "drop", "--network", "vnet", "--", "sleep", "600")
    res = net.cli("run", "-d", "--name", "keep", "--network", "vnet", "--", "true")
    assert res.returncode != 0 and "container keep already exists" in res.stderr
    net.stop()
    assert _keys(db, "containers/") == [f"containers/{node}/drop", f"containers/{node}/keep"]
    assert _keys(db, "cluster/names/") == ["cluster/names/drop", "cluster/names/keep"]
    assert all(k.count("/") == 3 for k in _keys(db, "cluster/status/"))
    # Both containers' endpoints under the node, naming it; the layout marked.
    eps = _records(db, "endpoints/")
    assert sorted(d["container_name"] for d in eps.values()) == ["drop", "keep"]
    assert all(k.startswith(f"endpoints/vnet/{node}/") for k in eps)
    assert all(d["node"] == node for d in eps.values())
    assert _keys(db, "cluster/layout/") == [f"cluster/layout/{node}"]
    net.start()
    net.ok("rm", "-f", "keep", "drop")
    assert json.loads(net.ok("ps", "-a", "--format", "json")) == []
