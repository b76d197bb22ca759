"""Containers as a Docker user expects them, through a real agent in a host
namespace of its own: names and IDs, output and formats, several names at
once, the daily flags."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

from agentproc import COVE

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    agent.ok("network", "create", "project_default", "--subnet", "10.89.0.0/24")
    return agent


def _sleep(agent: Any, name: str, *extra: str) -> str:
    out = agent.ok("run", "-d", "--name", name, "--network", "project_default", *extra,
                   "--", "sleep", "600")  # fmt: skip
    return str(out.strip())


def test_docker_style_names_resolve_as_given_and_dns_safe(net: Any) -> None:
    for name in ("my_app", "MyApp", "web.1", "project_web_1"):
        cid = _sleep(net, name)
        assert HEX64.match(cid), f"run -d prints the ID, got {cid!r}"
    addr = {
        n: inspect(net, n)["endpoints"]["project_default"]["ipv4"]
        for n in ("my_app", "MyApp", "web.1")
    }
    for query, name in [
        ("my_app", "my_app"), ("my-app", "my_app"), ("MyApp", "MyApp"), ("myapp", "MyApp"),
        ("web.1", "web.1"), ("web-1", "web.1"), ("my-app.project-default", "my_app"),
        ("my_app.project_default", "my_app"),
    ]:  # fmt: skip
        got = net.cli("exec", "project_web_1", "--", "getent", "ahostsv4", query)
        assert got.returncode == 0, (query, got.stderr)
        assert got.stdout.split()[0] == addr[name], query


def test_every_command_takes_an_id_or_a_unique_prefix(net: Any) -> None:
    cid = _sleep(net, "web")
    assert net.ok("exec", cid[:12], "--", "hostname").strip() == "web"
    assert net.ok("exec", cid[:5], "--", "true") == ""
    (body,) = json.loads(net.ok("inspect", cid))
    assert body["name"] == "web" and body["id"] == cid
    assert net.ok("stop", "-t", "1", cid[:8]).strip() == cid[:8]
    assert inspect(net, "web")["state"]["status"] == "exited"
    net.ok("start", cid)
    assert inspect(net, "web")["state"]["status"] == "running"

    nid = net.ok("network", "create", "other").strip()
    assert HEX64.match(nid)
    (n,) = json.loads(net.ok("network", "inspect", nid[:10]))
    assert n["name"] == "other" and n["id"] == nid
    net.ok("network", "connect", nid[:12], cid[:12])
    assert set(inspect(net, "web")["endpoints"]) == {"project_default", "other"}
    net.ok("network", "disconnect", nid[:12], "web")
    net.ok("rm", "-f", cid[:12])
    net.ok("network", "rm", nid[:12])
    res = net.cli("exec", "deadbeef", "--", "true")
    assert res.returncode == 3 and "container deadbeef not found" in res.stderr


def test_generated_names_look_like_names(net: Any) -> None:
    cid = net.ok("run", "-d", "--network", "project_default", "--", "sleep", "600").strip()
    name = inspect(net, cid)["name"]
    assert re.match(r"^[a-z]+_[a-z]+\d?$", name), name


def test_ps_quiet_filters_last_and_formats(net: Any) -> None:
    a = _sleep(net, "alpha", "--label", "tier=front")
    b = _sleep(net, "beta", "--label", "tier=back")
    c = net.ok("run", "-d", "--name", "gamma", "--", "sh", "-c", "exit 4").strip()
    eventually(lambda: inspect(net, "gamma")["state"]["status"] == "exited")

    assert sorted(net.ok("ps", "-q").split()) == sorted([a[:12], b[:12]])
    assert sorted(net.ok("ps", "-q", "--no-trunc").split()) == sorted([a, b])
    assert net.ok("ps", "-q", "--filter", "label=tier=back").split() == [b[:12]]
    assert net.ok("ps", "-aq", "--filter", "status=exited").split() == [c[:12]]
    assert net.ok("ps", "-q", "--filter", "name=alp").split() == [a[:12]]
    assert sorted(net.ok("ps", "-q", "-f", "network=project_default").split()) == sorted(
        [a[:12], b[:12]]
    )
    assert net.ok("ps", "-l", "--format", "{{.Name}}").split() == ["gamma"]
    assert net.ok("ps", "-n", "2", "--format", "{{.Name}}").split() == ["gamma", "beta"]
    lines = net.ok("ps", "--format", '{{.Name}} {{.State.Status}} {{index .Labels "tier"}}')
    assert sorted(lines.splitlines()) == ["alpha running front", "beta running back"]
    table = net.ok("ps", "--no-trunc").splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "STATUS"] and any(a in t for t in table)

    (one,) = json.loads(net.ok("inspect", "alpha"))  # one name: still a list
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$", one["created"])
    assert one["state"]["started_at"].endswith("Z")
    fmt = net.ok("inspect", "-f", "{{.Name}} {{.NetworkSettings.IPAddress}}", "alpha", "beta")
    ip = one["endpoints"]["project_default"]["ipv4"]
    assert fmt.splitlines()[0] == f"alpha {ip}" and fmt.splitlines()[1].startswith("beta 10.89.")
    bad = net.cli("inspect", "-f", "{{.Nmae}}", "alpha")
    assert bad.returncode == 2 and "no field 'Nmae'" in bad.stderr
    bad = net.cli("ps", "--filter", "colour=red")
    assert bad.returncode == 2 and "invalid filter 'colour=red'" in bad.stderr


def test_rm_of_several_removes_all_it_can_and_reports_each_failure(net: Any) -> None:
    _sleep(net, "one")
    net.ok("run", "-d", "--name", "two", "--", "true")
    res = net.cli("rm", "-f", "one", "nosuch", "two")
    assert res.returncode == 3
    assert res.stdout.split() == ["one", "two"]
    assert "container nosuch not found" in res.stderr
    assert net.ok("ps", "-aq") == ""
    res = net.cli("inspect", "nosuch")
    assert res.returncode == 3 and res.stdout == ""


def test_network_rm_force_and_prune_asks(net: Any) -> None:
    net.ok("network", "create", "idle", "--label", "env=dev")
    net.ok("network", "create", "idle2")
    assert net.cli("network", "rm", "nosuch").returncode == 3
    assert net.cli("network", "rm", "-f", "nosuch").returncode == 0
    res = net.cli("network", "prune", input="n\n")
    assert res.returncode == 1 and "Are you sure" in res.stdout
    assert sorted(net.ok("network", "ls", "-q").split()) == ["idle", "idle2", "project_default"]
    res = net.cli("network", "prune", "-f", "--filter", "label=env=dev")
    assert res.returncode == 0 and res.stdout.split() == ["Deleted", "Networks:", "idle"]
    _sleep(net, "user")  # a network in use stays
    res = net.cli("network", "prune", input="y\n")
    assert res.returncode == 0 and "idle2" in res.stdout
    assert net.ok("network", "ls", "-q").split() == ["project_default"]
    bad = net.cli("network", "prune", "-f", "--filter", "dangling=true")
    assert bad.returncode == 2 and "invalid filter" in bad.stderr


def test_logs_tail_exec_workdir_and_detach(net: Any) -> None:
    net.ok("run", "-d", "--name", "talk", "--", "sh", "-c", "seq 1 5; sleep 600")
    eventually(lambda: net.ok("logs", "talk").split() == ["1", "2", "3", "4", "5"])
    assert net.ok("logs", "--tail", "2", "talk").split() == ["4", "5"]
    assert net.ok("logs", "-n", "0", "talk") == ""
    bad = net.cli("logs", "--tail", "x", "talk")
    assert bad.returncode == 2 and "--tail" in bad.stderr
    assert net.ok("exec", "-w", "/tmp", "talk", "--", "pwd").strip() == "/tmp"

    # The container sees the host read-only: the detached command leaves its
    # mark in the container's own /tmp, which the test reads back through exec.
    def marked() -> bool:
        return net.cli("exec", "talk", "--", "test", "-e", "/tmp/detached").returncode == 0

    res = net.cli("exec", "-d", "talk", "--", "sh", "-c", "sleep 1; touch /tmp/detached")
    assert res.returncode == 0 and not marked()
    eventually(marked)


def test_run_rm_env_file_and_env_from_the_environment(net: Any, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# settings\nFROM_FILE=1\nPASSED\n")
    res = subprocess.run(
        [*COVE, "run", "--rm", "--name", "once", "--env-file", str(env_file),
         "-e", "PASSED", "-e", "ABSENT", "-e", "SET=x", "--",
         "sh", "-c", 'echo "$FROM_FILE $PASSED ${ABSENT-unset} $SET"; exit 7'],
        env={**net.env, "PASSED": "from-host"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 7, res.stderr
    assert res.stdout.strip() == "1 from-host unset x"
    assert net.ok("ps", "-aq") == ""  # --rm removed it
    res = net.cli("run", "--rm", "--entrypoint", "sh", "--", "-c", "echo via-entrypoint; exit 9")
    assert res.returncode == 9 and res.stdout.strip() == "via-entrypoint"


def test_restart_on_failure_with_a_limit(net: Any) -> None:
    net.ok("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "--", "sh", "-c", "exit 1")
    state = eventually(
        lambda: (
            (s := inspect(net, "flaky")["state"])["status"] == "exited"
            and s["restart_count"] == 2
            and s
        ),
        timeout=20,
    )
    assert state["exit_code"] == 1
    assert inspect(net, "flaky")["restart"] == "on-failure:2"
    bad = net.cli("run", "--restart", "sometimes", "--", "true")
    assert bad.returncode == 2 and "unless-stopped" in bad.stderr


def test_a_container_without_network_joins_the_default_bridge(agent: Any) -> None:
    need_containers(agent)
    assert agent.ok("network", "ls", "-q") == ""
    agent.ok("run", "-d", "--name", "a", "--", "sleep", "600")
    agent.ok("run", "-d", "--name", "b", "--", "sleep", "600")
    (net,) = json.loads(agent.ok("network", "inspect", "bridge"))
    assert net["labels"] == {"cove.default": "true"}
    assert agent.ok("network", "ls", "-q").split() == ["bridge"]
    a = inspect(agent, "a")["endpoints"]["bridge"]["ipv4"]
    got = agent.ok("exec", "b", "--", "getent", "hosts", "a").split()
    assert got[0] == a
    agent.ok("run", "-d", "--name", "alone", "--network", "none", "--", "sleep", "600")
    assert inspect(agent, "alone")["endpoints"] == {}
    bad = agent.cli("network", "create", "none")
    assert bad.returncode == 2 and "reserved" in bad.stderr
    bad = agent.cli("network", "create", "host")
    assert bad.returncode == 2 and "reserved" in bad.stderr
    bad = agent.cli("run", "--network", "host", "--network", "bridge", "--", "true")
    assert bad.returncode == 2 and "cannot go with other networks" in bad.stderr


def _instances(agent: Any, service: str) -> list[tuple[str, int, list[str], str]]:
    status, body = agent.api("GET", f"/v1/health/service/{service}")
    assert status == 200
    return [
        (e["Service"]["Address"], e["Service"]["Port"], e["Service"]["Tags"],
         "passing" if all(c["Status"] == "passing" for c in e["Checks"]) else "not")
        for e in body
    ]  # fmt: skip


def test_service_add_registers_a_running_container_and_follows_it(net: Any) -> None:
    net.ok("network", "create", "other", "--subnet", "10.88.0.0/24")
    net.ok("run", "-d", "--name", "api", "--network", "project_default", "--",
           "python3", "-S", "-m", "http.server", "8080")  # fmt: skip
    first = inspect(net, "api")["endpoints"]["project_default"]["ipv4"]
    out = net.ok("service", "add", "web", "--container", "api", "--port", "8080", "--tag", "v1")
    assert out.strip() == "web on api"
    eventually(lambda: _instances(net, "web") == [(first, 8080, ["v1"], "passing")], timeout=20)

    # Its address changes: the registration follows.
    net.ok("network", "connect", "other", "api")
    net.ok("network", "disconnect", "project_default", "api")
    second = inspect(net, "api")["endpoints"]["other"]["ipv4"]
    assert second != first
    eventually(lambda: [i[0] for i in _instances(net, "web")] == [second], timeout=20)

    bad = net.cli("service", "add", "web", "--container", "nosuch", "--port", "80")
    assert bad.returncode == 3 and "container nosuch not found" in bad.stderr
    bad = net.cli("service", "add", "web", "--container", "api", "--port", "0")
    assert bad.returncode == 2 and "out of range" in bad.stderr
    bad = net.cli("service", "rm", "nope", "--container", "api")
    assert bad.returncode == 3 and "has no service nope" in bad.stderr

    net.ok("rm", "-f", "api")  # the registration goes with the container
    eventually(lambda: _instances(net, "web") == [], timeout=20)


ZOMBIES = "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"
ORPHAN = "sh -c 'sleep 0.1 &'; exec sleep 600"  # the orphan's parent is the init


def test_init_reaps_and_forwards_stop_and_stop_signal(net: Any) -> None:
    net.ok("run", "-d", "--name", "plain", "--", "sh", "-c", ORPHAN)
    net.ok("run", "-d", "--name", "inited", "--init", "--", "sh", "-c", ORPHAN)
    eventually(lambda: net.ok("exec", "plain", "--", "sh", "-c", ZOMBIES).strip() == "1")
    eventually(lambda: net.ok("exec", "inited", "--", "sh", "-c", ZOMBIES).strip() == "0")
    assert net.ok("exec", "inited", "--", "sh", "-c", ZOMBIES).strip() == "0"

    # sleep as PID 1 ignores SIGTERM: only SIGKILL ends it. Under tini it ends
    # on SIGTERM at once.
    start = time.monotonic()
    net.ok("stop", "-t", "2", "plain")
    assert time.monotonic() - start >= 2
    assert inspect(net, "plain")["state"]["exit_code"] == 137
    start = time.monotonic()
    net.ok("stop", "-t", "20", "inited")
    assert time.monotonic() - start < 10
    assert inspect(net, "inited")["state"]["exit_code"] == 143

    script = ("import signal, sys, time\n"
              "def bye(*_):\n    print('got INT', flush=True)\n    sys.exit(5)\n"
              "signal.signal(signal.SIGINT, bye)\n"
              "print('ready', flush=True)\ntime.sleep(600)\n")  # fmt: skip
    net.ok("run", "-d", "--name", "polite", "--stop-signal", "INT", "--",
           "python3", "-S", "-c", script)  # fmt: skip
    eventually(lambda: "ready" in net.ok("logs", "polite"))
    net.ok("stop", "-t", "20", "polite")
    assert inspect(net, "polite")["state"]["exit_code"] == 5
    assert inspect(net, "polite")["stop_signal"] == "SIGINT"
    assert "got INT" in net.ok("logs", "polite")
    bad = net.cli("run", "--stop-signal", "SIGNOPE", "--", "true")
    assert bad.returncode == 2 and "invalid stop signal" in bad.stderr


def _on_a_terminal(agent: Any, *args: str, rows: int = 37, cols: int = 91) -> tuple[int, str]:
    """``cove ARGS`` with a pseudo-terminal of ROWSxCOLS as its controlling
    terminal and stdio; its exit status and what it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [*COVE, *args], stdin=slave, stdout=slave, stderr=slave, env=agent.env,
        preexec_fn=own_terminal,
    )  # fmt: skip
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every end of the terminal is closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(10), out.decode(errors="replace")


def test_exec_it_has_the_terminal_size_and_exits_with_the_shell_status(net: Any) -> None:
    _sleep(net, "box")
    code, out = _on_a_terminal(
        net, "exec", "-it", "box", "sh", "-c", "stty size; test -t 0 && echo tty; exit 3"
    )
    assert code == 3, out
    assert "37 91" in out and "tty" in out, out


FETCH = "import sys, urllib.request\nprint(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"


def test_hairpin_a_container_reaches_its_own_published_port_through_the_host(
    net: Any, tmp_path: Path
) -> None:
    fetch = tmp_path / "fetch.py"
    fetch.write_text(FETCH)
    # A second host address, in the test's host namespace (gone with it).
    subprocess.run(
        ["ip", "link", "add", "cvhp0", "type", "veth", "peer", "name", "cvhp1"], check=True
    )
    subprocess.run(["ip", "addr", "add", "192.0.2.10/24", "dev", "cvhp0"], check=True)
    subprocess.run(["ip", "link", "set", "cvhp0", "up"], check=True)
    net.ok("run", "-d", "--name", "site", "--network", "project_default", "-p", "8080:8000",
           "--", "python3", "-S", "-m", "http.server", "8000")  # fmt: skip
    net.ok("run", "-d", "--name", "peer", "--network", "project_default", "--", "sleep", "600")
    gateway = "10.89.0.1"
    for who in ("site", "peer"):
        for host in (gateway, "192.0.2.10"):
            url = f"http://{host}:8080/"
            got = eventually(
                lambda w=who, u=url: net.ok("exec", w, "--", "python3", "-S", str(fetch), u)
            )
            assert got.strip() == "200", (who, host)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return int(resp.status)


def test_port_ranges_and_publish_all(net: Any) -> None:
    two = "python3 -S -m http.server 8000 & exec python3 -S -m http.server 8001"
    net.ok("run", "-d", "--name", "pair", "--network", "project_default",
           "-p", "18000-18001:8000-8001", "--", "sh", "-c", two)  # fmt: skip
    assert inspect(net, "pair")["ports"] == ["18000:8000/tcp", "18001:8001/tcp"]
    for port in (18000, 18001):
        assert eventually(lambda p=port: _get(f"http://127.0.0.1:{p}/") == 200)

    net.ok("run", "-d", "--name", "auto", "--network", "project_default",
           "--expose", "8000", "--expose", "53/udp", "-P",
           "--", "python3", "-S", "-m", "http.server", "8000")  # fmt: skip
    # the --expose order, whatever free host ports were picked
    got = inspect(net, "auto")["ports"]
    assert [p.split(":")[1] for p in got] == ["8000/tcp", "53/udp"], got
    host_ports = [int(p.split(":")[0]) for p in got]
    assert all(32768 <= p < 61000 for p in host_ports), got
    tcp_port = int(next(p for p in got if p.endswith("8000/tcp")).split(":")[0])
    assert eventually(lambda: _get(f"http://127.0.0.1:{tcp_port}/") == 200)
    bad = net.cli("run", "-p", "8000-8002:80-81", "--", "true")
    assert bad.returncode == 2 and "differ in length" in bad.stderr


def test_add_host_lines_reach_etc_hosts(net: Any) -> None:
    _sleep(net, "h", "--add-host", "db.example:10.1.2.3", "--add-host", "gw:host-gateway")
    assert net.ok("exec", "h", "--", "getent", "hosts", "db.example").split() == [
        "10.1.2.3",
        "db.example",
    ]
    assert net.ok("exec", "h", "--", "getent", "hosts", "gw").split()[0] == "10.89.0.1"
    bad = net.cli("run", "--add-host", "db", "--", "true")
    assert bad.returncode == 2 and "invalid --add-host 'db'" in bad.stderr


def test_user_for_run_and_exec(net: Any) -> None:
    net.ok("run", "-d", "--name", "u", "-u", "nobody", "--", "sleep", "600")
    ids = "id -u; id -g; grep CapEff /proc/self/status"
    uid, gid, caps = net.ok("exec", "-u", "nobody", "u", "--", "sh", "-c", ids).splitlines()
    assert (uid, gid) == ("65534", "65534") and caps.split()[1] == "0" * 16
    run_ps = net.ok("exec", "u", "--", "sh", "-c", "grep '^Uid' /proc/1/status").split()
    assert run_ps[1] == "65534", run_ps  # the container's init runs as nobody
    assert net.ok("exec", "-u", "1234:5678", "u", "--", "id", "-u").strip() == "1234"
    assert net.ok("exec", "u", "--", "id", "-u").strip() == "65534"  # run's user, as Docker
    assert net.ok("exec", "-u", "0", "u", "--", "id", "-u").strip() == "0"
    bad = net.cli("exec", "-u", "nosuch", "u", "--", "true")
    assert bad.returncode == 126 and "no user 'nosuch'" in bad.stderr
    bad = net.cli("run", "-u", "nosuch", "--", "true")
    assert bad.returncode != 0 and "no user 'nosuch'" in bad.stderr
    assert net.ok("ps", "-aq", "--filter", "name=nosuch") == ""


def test_detached_rm_is_removed_when_it_exits(net: Any) -> None:
    cid = net.ok("run", "-d", "--rm", "--name", "brief", "--", "sh", "-c", "sleep 3").strip()
    assert inspect(net, cid)["auto_remove"] is True
    eventually(lambda: net.ok("ps", "-aq") == "", timeout=10)
    bad = net.cli("run", "--rm", "--restart", "always", "--", "true")
    assert bad.returncode == 2 and "cannot go together" in bad.stderr
    # A stopped one goes too.
    net.ok("run", "-d", "--rm", "--name", "stopped", "--", "sleep", "600")
    net.ok("stop", "-t", "1", "stopped")
    eventually(lambda: net.ok("ps", "-aq") == "", timeout=10)
