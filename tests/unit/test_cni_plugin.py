"""``cove-cni``, run as a runtime runs it: a fresh process per call, the
environment and stdin of each call podman 4.3 made (recorded in
/work/shared/cni/podman-4.3-calls.log, a copy in tests/data), every result
version, and bad input. The replay runs against a real agent in a host
namespace of the test's own (root); the plugin's own checks need neither."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cove.cni.plugin as plugin_mod
from cove.cni import conflist

PLUGIN = Path(plugin_mod.__file__)
LOG = Path(__file__).parent.parent / "data" / "podman-4.3-calls.log"
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


# How the plugin is run: the Python plugin (``python3 -I -S plugin.py``)
# or, set by the ``runner`` fixture, the compiled shim ``cove cni install``
# builds in front of it.
_RUNNER: list[list[str]] = [[sys.executable, "-I", "-S", str(PLUGIN)]]


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the shim")
    path = conflist.install_plugin(tmp_path_factory.mktemp("cnibin"), sys.executable)
    assert (path.parent / "cove-cni.py").exists(), "the shim was not built"
    return path


@pytest.fixture(params=["python", "shim"])
def runner(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "shim":
        _RUNNER.insert(0, [str(request.getfixturevalue("shim"))])
    try:
        yield str(request.param)
    finally:
        if request.param == "shim":
            _RUNNER.pop(0)


def cni(
    command: str,
    conf: dict[str, Any] | str,
    env: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One plugin call, as a runtime makes it: a fresh process."""
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    full = {"PATH": "/usr/bin:/bin", **(env or {})}
    if command:
        full["CNI_COMMAND"] = command
    res = subprocess.run(
        _RUNNER[0],
        input=stdin,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = json.loads(res.stdout) if res.stdout.strip() else None
    return res.returncode, out


def parse_log(path: Path) -> list[dict[str, Any]]:
    """Each recorded call: command, delegate, env, stdin (a dict)."""
    calls: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    mode = ""
    for line in path.read_text().splitlines():
        if line.startswith("=== "):
            head = dict(p.split("=", 1) for p in line.split()[2:])
            cur = {"command": head["CNI_COMMAND"], "delegate": head["delegate"], "env": {}}
            calls.append(cur)
            mode = "env"
        elif cur is None:
            continue
        elif line.startswith("--- stdin"):
            mode = "stdin"
        elif line.startswith("--- stdout"):
            mode = "stdout"
        elif mode == "env" and "=" in line:
            k, v = line.split("=", 1)
            cur["env"][k] = v
        elif mode == "stdin" and line.strip():
            cur["stdin"] = json.loads(line)
    return calls


# -- the plugin alone ----------------------------------------------------------


def test_the_plugin_imports_only_the_standard_library() -> None:
    tree = ast.parse(PLUGIN.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
    # Imported as the console script does: nothing of cove beyond itself.
    code = "import sys, cove.cni.plugin; print(' '.join(sorted(sys.modules)))"
    mods = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    cove_mods = {m for m in mods if m == "cove" or m.startswith("cove.")}
    assert cove_mods == {"cove", "cove.cni", "cove.cni.plugin"}
    assert not {"pyroute2", "aiohttp", "orjson", "http.client"} & set(mods)
    # Run as the runtime runs it, VERSION imports no module beyond the
    # interpreter's own start (json, socket and re cost most of a start).
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(PLUGIN)],
        input='{"cniVersion": "1.0.0"}',
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if "|" in line}
    assert not {"json", "socket", "re", "typing", "http.client", "enum"} & loaded


@pytest.mark.usefixtures("runner")
def test_version_answers_without_an_agent() -> None:
    for asked in VERSIONS:
        rc, out = cni("VERSION", {"cniVersion": asked}, {"CNI_IFNAME": "dummy"})
        assert rc == 0
        assert out == {"cniVersion": asked, "supportedVersions": VERSIONS}


@pytest.mark.parametrize(
    ("command", "stdin", "env", "code", "words"),
    [
        ("", {"cniVersion": "1.0.0"}, {}, 4, "CNI_COMMAND"),
        ("ADD", "{not json", {}, 6, "not JSON"),
        ("ADD", "[1, 2]", {}, 6, "not a JSON object"),
        ("ADD", {"cniVersion": "0.2.0", "name": "n"}, {}, 1, "0.2.0"),
        ("ADD", {"name": "n"}, {}, 7, "cniVersion"),
        ("ADD", {"cniVersion": "1.0.0", "name": "n"}, {"CNI_IFNAME": "eth0"}, 4, "CNI_CONTAINERID"),
        (
            "ADD",
            {"cniVersion": "1.0.0", "name": "n"},
            {"CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0"},
            4,
            "CNI_NETNS",
        ),
        (
            "ADD",
            {"cniVersion": "1.0.0", "name": "n"},
            {"CNI_CONTAINERID": "../x", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
            4,
            "CNI_CONTAINERID",
        ),
        (
            "ADD",
            {"cniVersion": "1.0.0", "name": "n"},
            {"CNI_CONTAINERID": "abc", "CNI_IFNAME": "a/b", "CNI_NETNS": "/x"},
            4,
            "CNI_IFNAME",
        ),
        (
            "ADD",
            {"cniVersion": "1.0.0", "name": "n"},
            {"CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", "CNI_NETNS": "rel"},
            4,
            "CNI_NETNS",
        ),
        (
            "ADD",
            {"cniVersion": "1.0.0", "name": "n"},
            {
                "CNI_CONTAINERID": "abc",
                "CNI_IFNAME": "eth0",
                "CNI_NETNS": "/x",
                "CNI_ARGS": "FOO=1",
            },
            2,
            "FOO",
        ),
        (
            "ADD",
            {"cniVersion": "1.0.0", "name": "n", "agentSocket": "relative.sock"},
            {"CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
            7,
            "agentSocket",
        ),
        ("FROB", {"cniVersion": "1.0.0", "name": "n"}, {}, 4, "FROB"),
        (
            "GC",
            {"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": [{"x": 1}]},
            {},
            7,
            "valid-attachments",
        ),
        (
            "CHECK",
            {"cniVersion": "0.3.1", "name": "n"},
            {"CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
            1,
            "CHECK",
        ),
    ],
)
@pytest.mark.usefixtures("runner")
def test_bad_input_is_a_cni_error_naming_it(
    command: str, stdin: Any, env: dict[str, str], code: int, words: str
) -> None:
    rc, out = cni(command, stdin, env)
    assert rc != 0
    assert out["code"] == code, out
    assert words in out["msg"] + out.get("details", "")
    assert set(out) <= {"cniVersion", "code", "msg", "details"}


@pytest.mark.usefixtures("runner")
def test_an_agent_that_is_down_is_try_again_later(tmp_path: Path) -> None:
    conf = {"cniVersion": "1.0.0", "name": "n", "agentSocket": str(tmp_path / "none.sock")}
    env = {"CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}
    for command in ("ADD", "DEL", "CHECK"):
        c = dict(conf, prevResult={"cniVersion": "1.0.0"}) if command == "CHECK" else conf
        rc, out = cni(command, c, env)
        assert rc != 0 and out["code"] == 11, (command, out)
        assert "not reachable" in out["msg"]
    rc, out = cni("GC", dict(conf, cniVersion="1.1.0"))
    assert out["code"] == 11
    rc, out = cni("STATUS", dict(conf, cniVersion="1.1.0"))
    assert rc != 0 and out["code"] == 50


def test_results_carry_the_ip_version_field_only_before_1_0() -> None:
    ours = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "b"}, {"name": "v"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [
            {"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 2},
            {"address": "fd00::2/64", "gateway": "fd00::1", "interface": 2},
        ],
    }
    for v in ("0.3.0", "0.3.1", "0.4.0"):
        out = plugin_mod.convert(ours, v)
        assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
        assert out["cniVersion"] == v
    for v in ("1.0.0", "1.1.0"):
        out = plugin_mod.convert(ours, v)
        assert all("version" not in ip for ip in out["ips"])


def test_chained_after_another_plugin_its_interfaces_are_appended() -> None:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "x0"}],
        "ips": [{"address": "192.168.0.2/24", "interface": 0}],
    }
    ours = {
        "interfaces": [{"name": "b"}, {"name": "v"}, {"name": "eth1"}],
        "ips": [{"address": "10.0.0.2/24", "interface": 2}],
        "routes": [],
    }
    out = plugin_mod._chain(prev, ours)
    assert [i["name"] for i in out["interfaces"]] == ["x0", "b", "v", "eth1"]
    assert out["ips"][1] == {"address": "10.0.0.2/24", "interface": 3}


# -- against a real agent --------------------------------------------------------

root = pytest.mark.root


@pytest.fixture
def cnienv(agent: Any, runner: str) -> Iterator[dict[str, Any]]:
    agent.ok("network", "create", "--subnet", "10.89.55.0/24", "vnet")
    sys.path.insert(0, str(Path(__file__).parent.parent))
    import nsutil

    with nsutil.namespace("cvc") as ns1, nsutil.namespace("cvc") as ns2:
        yield {"agent": agent, "sock": str(agent.socket), "netns": [ns1, ns2], "runner": runner}


def _conf(env: dict[str, Any], version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "vnet",
        "type": "cove-cni",
        "network": "vnet",
        "agentSocket": env["sock"],
        **extra,
    }


def _ip(ns: str, ifname: str = "eth0") -> list[dict[str, Any]]:
    res = subprocess.run(
        ["ip", "-j", "-n", ns, "addr", "show", "dev", ifname], capture_output=True, text=True
    )
    return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else []


def _endpoints(agent: Any) -> list[dict[str, Any]]:
    status, body = agent.api("GET", "/api/networks/vnet")
    assert status == 200
    return list(body["endpoints"])


def _ipam(agent: Any) -> int:
    status, body = agent.api("GET", "/api/cni/attachments?network=vnet")
    assert status == 200
    return len(body)


@root
def test_replay_of_podman_calls(cnienv: dict[str, Any]) -> None:
    """Every call podman made to the first plugin of its chain, with the
    plugin swapped for cove-cni: each ADD gives a cove address (the static
    one and the MAC when asked), a DNS name, the port; each DEL takes all
    of it back and leaves the runtime's namespace alone."""
    agent = cnienv["agent"]
    ns = cnienv["netns"][0]
    calls = [c for c in parse_log(LOG) if c["delegate"] == "bridge"]
    assert [c["command"] for c in calls].count("ADD") == 4
    for call in calls:
        stdin = dict(call["stdin"])
        env = dict(call["env"])
        if call["command"] != "VERSION":
            stdin.update(type="cove-cni", network="vnet", agentSocket=cnienv["sock"])
            stdin.pop("ipam", None)
            env["CNI_NETNS"] = f"/run/netns/{ns}"
            # 1.1.0 is the version podman 4.3 could not take; cove-cni can.
        rc, out = cni(call["command"], stdin, env)
        assert rc == 0, (call["command"], out)
        args = dict(p.split("=", 1) for p in env.get("CNI_ARGS", "").split(";") if "=" in p)
        if call["command"] == "ADD":
            assert out["cniVersion"] == stdin["cniVersion"]
            eth0 = out["interfaces"][out["ips"][0]["interface"]]
            assert eth0["name"] == "eth0" and eth0["sandbox"] == env["CNI_NETNS"]
            address = out["ips"][0]["address"]
            assert address.startswith("10.89.55.") and address.endswith("/24")
            assert out["ips"][0]["gateway"] == "10.89.55.1"
            if "IP" in args:
                assert address == f"{args['IP']}/24"
            if "MAC" in args:
                assert eth0["mac"] == args["MAC"]
            inside = _ip(ns)
            assert inside and inside[0]["address"] == eth0["mac"]
            assert address.split("/")[0] in [a["local"] for a in inside[0]["addr_info"]]
            (ep,) = _endpoints(agent)
            assert ep["container_name"] == args["K8S_POD_NAME"].lower()
            assert ep["ipv4"] == address.split("/")[0]
            aliases = stdin.get("runtimeConfig", {}).get("aliases", {}).get("cmhcni", [])
            for alias in aliases:
                assert alias in ep["aliases"]
        elif call["command"] == "DEL":
            assert out is None
            assert _endpoints(agent) == []
            assert _ipam(agent) == 0
            assert _ip(ns) == []
            assert os.path.exists(f"/run/netns/{ns}")  # never the runtime's namespace
            # Repeatable.
            rc, out = cni("DEL", stdin, env)
            assert rc == 0 and out is None
    # The retired veth pairs are deleted soon after, in a batch.
    deadline = time.monotonic() + 10
    while _host_cni_veths():
        assert time.monotonic() < deadline, f"veths left: {_host_cni_veths()}"
        time.sleep(0.1)


def _host_cni_veths() -> list[str]:
    res = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    names = [str(link["ifname"]) for link in json.loads(res.stdout)]
    return [n for n in names if n.startswith("cn") and len(n) == 12]


@root
@pytest.mark.parametrize("version", VERSIONS)
def test_each_result_version_then_check_and_del(cnienv: dict[str, Any], version: str) -> None:
    ns = cnienv["netns"][0]
    env = {
        "CNI_CONTAINERID": "c" * 64,
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": f"/run/netns/{ns}",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web_1",
        "CNI_PATH": "/usr/lib/cni",
    }
    rc, out = cni("ADD", _conf(cnienv, version), env)
    assert rc == 0, out
    assert out["cniVersion"] == version
    has_version = version.startswith("0.")
    assert all(("version" in ip) == has_version for ip in out["ips"])
    if has_version:
        assert out["ips"][0]["version"] == "4"
    (ep,) = _endpoints(cnienv["agent"])
    assert ep["container_name"] == "web_1" and "web-1" in ep["aliases"]
    if version not in ("0.3.0", "0.3.1"):
        rc, bad = cni("CHECK", _conf(cnienv, version, prevResult=out), env)
        assert rc == 0 and bad is None, bad
        # An address the interface does not have: CHECK fails.
        wrong = json.loads(json.dumps(out))
        wrong["ips"][0]["address"] = "10.89.55.99/24"
        rc, bad = cni("CHECK", _conf(cnienv, version, prevResult=wrong), env)
        assert rc != 0 and "10.89.55.99" in bad["msg"]
    rc, gone = cni("DEL", _conf(cnienv, version, prevResult=out), env)
    assert rc == 0 and gone is None
    assert _endpoints(cnienv["agent"]) == []
    rc, gone = cni("DEL", _conf(cnienv, version), {**env, "CNI_NETNS": ""})
    assert rc == 0


@root
def test_check_finds_a_host_veth_off_its_bridge_and_a_lost_route(cnienv: dict[str, Any]) -> None:
    ns = cnienv["netns"][0]
    env = {
        "CNI_CONTAINERID": "d" * 64,
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": f"/run/netns/{ns}",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=chk",
    }
    rc, out = cni("ADD", _conf(cnienv), env)
    assert rc == 0, out
    bridge, veth = out["interfaces"][0]["name"], out["interfaces"][1]["name"]
    check = _conf(cnienv, prevResult=out)
    try:
        rc, bad = cni("CHECK", check, env)
        assert rc == 0 and bad is None, bad
        # The host side taken off the network's bridge: CHECK names it.
        subprocess.run(["ip", "link", "set", "dev", veth, "nomaster"], check=True)
        rc, bad = cni("CHECK", check, env)
        assert rc != 0 and bad["code"] == 999, bad
        assert veth in bad["msg"] and bridge in bad["msg"] and "re-create" in bad["msg"]
        subprocess.run(["ip", "link", "set", "dev", veth, "master", bridge], check=True)
        rc, bad = cni("CHECK", check, env)
        assert rc == 0 and bad is None, bad
        # The default route of the result gone from the namespace.
        subprocess.run(["ip", "-n", ns, "route", "del", "default"], check=True)
        rc, bad = cni("CHECK", check, env)
        assert rc != 0 and "default route" in bad["msg"], bad
        gw = out["ips"][0]["gateway"]
        subprocess.run(["ip", "-n", ns, "route", "add", "default", "via", gw], check=True)
        rc, bad = cni("CHECK", check, env)
        assert rc == 0 and bad is None, bad
        # The veth pair gone altogether.
        subprocess.run(["ip", "link", "del", "dev", veth], check=True)
        rc, bad = cni("CHECK", check, env)
        assert rc != 0 and "eth0 is missing" in bad["msg"], bad
    finally:
        rc, _ = cni("DEL", check, env)
    assert rc == 0
    assert _endpoints(cnienv["agent"]) == []


@root
def test_faults_leave_nothing_half_made(cnienv: dict[str, Any]) -> None:
    agent = cnienv["agent"]
    ns1, ns2 = cnienv["netns"]
    base = {"CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a"}
    env1 = {**base, "CNI_CONTAINERID": "one", "CNI_NETNS": f"/run/netns/{ns1}"}
    # An unknown network: 7 (invalid configuration), never 3.
    rc, out = cni("ADD", dict(_conf(cnienv), network="nope"), env1)
    assert rc != 0 and out["code"] == 7 and "nope" in out["msg"]
    # A namespace that does not exist.
    rc, out = cni("ADD", _conf(cnienv), {**env1, "CNI_NETNS": "/run/netns/absent-cvx"})
    assert rc != 0 and out["code"] == 7 and "absent-cvx" in out["msg"]
    assert _endpoints(agent) == [] and _ipam(agent) == 0
    # An address outside the subnet.
    rc, out = cni("ADD", _conf(cnienv), {**env1, "CNI_ARGS": "IP=10.1.2.3"})
    assert rc != 0 and out["code"] == 7
    # An interface that already exists in the namespace: refused, and the
    # address it was given is released.
    subprocess.run(
        ["ip", "-n", ns1, "link", "add", "eth0", "type", "veth", "peer", "name", "x0"], check=True
    )
    rc, out = cni("ADD", _conf(cnienv), env1)
    assert rc != 0 and "already exists" in out["msg"], out
    assert _endpoints(agent) == []
    status, body = agent.api("GET", "/api/networks/vnet")
    rc, out = cni("ADD", _conf(cnienv), {**env1, "CNI_NETNS": f"/run/netns/{ns2}"})
    assert rc == 0, out
    assert out["ips"][0]["address"] == "10.89.55.2/24"  # .2 was given back
    # The same (container, ifname) twice: refused, the first one intact.
    rc, again = cni("ADD", _conf(cnienv), {**env1, "CNI_NETNS": f"/run/netns/{ns2}"})
    assert rc != 0 and "already" in again["msg"]
    assert len(_endpoints(agent)) == 1
    rc, _ = cni("DEL", _conf(cnienv), {**env1, "CNI_NETNS": f"/run/netns/{ns2}"})
    assert rc == 0


@root
def test_exhausted_subnet_is_an_error_and_holds_nothing(cnienv: dict[str, Any]) -> None:
    agent = cnienv["agent"]
    agent.ok("network", "create", "--subnet", "10.89.56.0/30", "tiny")
    ns1, ns2 = cnienv["netns"]
    conf = dict(_conf(cnienv), network="tiny")
    env = {"CNI_IFNAME": "eth0", "CNI_CONTAINERID": "one", "CNI_NETNS": f"/run/netns/{ns1}"}
    rc, out = cni("ADD", conf, env)
    assert rc == 0, out
    rc, out = cni("STATUS", dict(conf, cniVersion="1.1.0"))
    assert rc != 0 and out["code"] == 50 and "no free address" in out["msg"]
    rc, out = cni("ADD", conf, {**env, "CNI_CONTAINERID": "two", "CNI_NETNS": f"/run/netns/{ns2}"})
    assert rc != 0 and out["code"] == 11, out
    assert "exhaust" in out["msg"] or "no free" in out["msg"] or "left" in out["msg"]
    rc, _ = cni("DEL", conf, env)
    assert rc == 0
    rc, out = cni("STATUS", dict(conf, cniVersion="1.1.0"))
    assert rc == 0 and out is None


@root
def test_gc_removes_what_is_not_valid(cnienv: dict[str, Any]) -> None:
    agent = cnienv["agent"]
    ns1, ns2 = cnienv["netns"]
    for cid, ns in (("keep", ns1), ("lost", ns2)):
        env = {"CNI_IFNAME": "eth0", "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{ns}"}
        rc, out = cni("ADD", _conf(cnienv), env)
        assert rc == 0, out
    gc = _conf(cnienv, "1.1.0")
    gc["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"}]
    rc, out = cni("GC", gc)
    assert rc == 0 and out is None
    eps = _endpoints(agent)
    assert [e["container_id"] for e in eps] == ["keep"]
    assert _ip(ns2) == [] and _ip(ns1) != []
    rc, out = cni("STATUS", _conf(cnienv, "1.1.0"))
    assert rc == 0


@root
def test_del_after_the_agent_was_killed(cnienv: dict[str, Any]) -> None:
    agent = cnienv["agent"]
    ns = cnienv["netns"][0]
    env = {"CNI_IFNAME": "eth0", "CNI_CONTAINERID": "k9", "CNI_NETNS": f"/run/netns/{ns}"}
    rc, out = cni("ADD", _conf(cnienv), env)
    assert rc == 0, out
    agent.kill9()
    rc, out = cni("DEL", _conf(cnienv), env)
    assert rc != 0 and out["code"] == 11
    agent.start()
    rc, out = cni("DEL", _conf(cnienv), env)
    assert rc == 0, out
    assert _endpoints(agent) == [] and _ip(ns) == []


@root
def test_an_opt_in_label_registers_a_consul_service(cnienv: dict[str, Any]) -> None:
    agent = cnienv["agent"]
    ns = cnienv["netns"][0]
    env = {
        "CNI_IFNAME": "eth0",
        "CNI_CONTAINERID": "svc1",
        "CNI_NETNS": f"/run/netns/{ns}",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=api;COVE_SERVICE=api:8080",
    }
    bad = {**env, "CNI_ARGS": "COVE_SERVICE=api"}
    rc, out = cni("ADD", _conf(cnienv), bad)
    assert rc != 0 and out["code"] == 7 and "NAME:PORT" in out["msg"]
    rc, out = cni("ADD", _conf(cnienv), env)
    assert rc == 0, out
    addr = out["ips"][0]["address"].split("/")[0]

    def instances() -> list[Any]:
        status, body = agent.api("GET", "/v1/catalog/service/api")
        assert status == 200
        return list(body)

    deadline = time.monotonic() + 15
    while not instances():
        assert time.monotonic() < deadline, "api was never registered"
        time.sleep(0.2)
    (svc,) = instances()
    assert svc["ServiceAddress"] == addr and svc["ServicePort"] == 8080
    status, checks = agent.api("GET", "/v1/health/checks/api")
    assert status == 200 and checks and checks[0]["Type"] == "tcp"
    rc, _ = cni("DEL", _conf(cnienv), env)
    assert rc == 0
    deadline = time.monotonic() + 15
    while instances():
        assert time.monotonic() < deadline, "api stayed registered after DEL"
        time.sleep(0.2)


@root
def test_the_shim_attaches_without_starting_python(cnienv: dict[str, Any], tmp_path: Path) -> None:
    if cnienv.get("runner") == "python" or shutil.which("cc") is None:
        pytest.skip("the shim's own test")
    shim = conflist.install_plugin(tmp_path / "bin", sys.executable)
    (tmp_path / "bin" / "cove-cni.py").unlink()  # no fallback: the fast path alone
    ns = cnienv["netns"][0]
    env = {"CNI_IFNAME": "eth0", "CNI_CONTAINERID": "fast", "CNI_NETNS": f"/run/netns/{ns}"}
    for command in ("VERSION", "ADD", "DEL"):
        res = subprocess.run(
            [str(shim)],
            input=json.dumps(_conf(cnienv)),
            env={**env, "CNI_COMMAND": command},
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, (command, res.stdout, res.stderr)
        if command == "ADD":
            assert json.loads(res.stdout)["ips"][0]["address"].startswith("10.89.55.")
    # A refusal comes back as the plugin's error, with a non-zero exit.
    res = subprocess.run(
        [str(shim)],
        input=json.dumps(dict(_conf(cnienv), network="nope")),
        env={**env, "CNI_COMMAND": "ADD"},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and json.loads(res.stdout)["code"] == 7


_RECEIVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7000))
s.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        data, (src, _port) = s.recvfrom(2048)
    except TimeoutError:
        continue
    print(data.decode(), src, flush=True)
    if data.startswith(b"last"):
        break
"""

_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.sendto(sys.argv[4].encode(), (sys.argv[2], int(sys.argv[3])))
"""


def _exchange(own_ns: str, peer_ns: str, sends: list[tuple[str, str, str]], peer: str) -> str:
    """What the peer (a UDP receiver on port 7000 in ``peer_ns``) got from
    ``sends`` (each: an ``ip`` command to run in ``own_ns`` first or "",
    the source address, the payload), ended by a "last" datagram."""
    recv = subprocess.Popen(
        ["ip", "netns", "exec", peer_ns, sys.executable, "-S", "-c", _RECEIVER, "10"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        for cmd, src, payload in sends:
            if cmd:
                subprocess.run(["ip", "-n", own_ns, *cmd.split()], check=True)
            subprocess.run(
                ["ip", "netns", "exec", own_ns, sys.executable, "-S", "-c", _SEND,
                 src, peer, "7000", payload],
                check=True,
            )  # fmt: skip
            time.sleep(0.2)
        out, _ = recv.communicate(timeout=15)
        return out
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()


@root
def test_an_attachment_cannot_send_with_a_forged_source(cnienv: dict[str, Any]) -> None:
    """A podman container is guarded as cove's own: frames from another
    IPv4 address or another MAC than its attachment's never reach a peer,
    its own do; the guard comes back after the agent restarts."""
    agent = cnienv["agent"]
    ns1, ns2 = cnienv["netns"]
    addrs = []
    for i, ns in enumerate((ns1, ns2)):
        env = {
            "CNI_IFNAME": "eth0",
            "CNI_CONTAINERID": f"guard{i}",
            "CNI_NETNS": f"/run/netns/{ns}",
        }
        rc, out = cni("ADD", _conf(cnienv), env)
        assert rc == 0, out
        addrs.append(out["ips"][0]["address"].split("/")[0])
    me, peer = addrs
    forged_ip = "10.89.55.200"  # in the subnet, held by nobody
    (link,) = json.loads(
        subprocess.run(["ip", "-j", "-n", ns1, "link", "show", "eth0"],
                       capture_output=True, text=True, check=True).stdout
    )  # fmt: skip
    own_mac = link["address"]

    def attempt(tag: str) -> str:
        return _exchange(
            ns1,
            ns2,
            [
                ("", me, f"own-{tag}"),
                (f"addr add {forged_ip}/24 dev eth0", forged_ip, f"forged-ip-{tag}"),
                (f"addr del {forged_ip}/24 dev eth0", me, f"own-again-{tag}"),
                ("link set eth0 address 02:42:de:ad:be:ef", me, f"forged-mac-{tag}"),
                (f"link set eth0 address {own_mac}", me, f"last-{tag}"),
            ],
            peer,
        )

    got = attempt("a")
    assert f"own-a {me}" in got and f"own-again-a {me}" in got and "last-a" in got, got
    assert "forged-ip" not in got and "forged-mac" not in got, got
    # After a crash and with the table gone, the restarted agent guards
    # the attachment again.
    agent.kill9()
    subprocess.run(
        ["ip", "netns", "exec", agent.hostns, "nft", "delete", "table", "bridge", "cove_guard"],
        check=True,
    )
    agent.start()
    got = attempt("b")
    assert f"own-b {me}" in got and "last-b" in got, got
    assert "forged-ip" not in got and "forged-mac" not in got, got
    for i, ns in enumerate((ns1, ns2)):
        env = {
            "CNI_IFNAME": "eth0",
            "CNI_CONTAINERID": f"guard{i}",
            "CNI_NETNS": f"/run/netns/{ns}",
        }
        assert cni("DEL", _conf(cnienv), env)[0] == 0
    # The entries go with the veths, deleted in a batch soon after.
    deadline = time.monotonic() + 10
    while True:
        table = subprocess.run(
            ["ip", "netns", "exec", agent.hostns, "nft", "-j", "list", "set", "bridge",
             "cove_guard", "ports"], capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        if '"cn' not in table or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert '"cn' not in table, table


_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[1].encode())
    c.close()
"""

_CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 8080), timeout=3) as c:
        print(c.recv(64).decode())
except OSError as exc:
    print("FAIL", exc)
"""


@root
def test_a_cni_container_registered_as_a_service_is_reached_through_its_vip(
    cnienv: dict[str, Any],
) -> None:
    """A container of another runtime that opts in (COVE_SERVICE) is a
    backend of its service's VIP: another container on the network reaches
    it through the VIP; after DEL the VIP has no backend left."""
    if cnienv["runner"] == "shim":
        pytest.skip("the same agent path as the Python plugin's")
    agent = cnienv["agent"]
    server_ns, client_ns = cnienv["netns"]
    base = {"CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;COVE_SERVICE=api:8080"}
    env_s = {**base, "CNI_CONTAINERID": "vipsrv", "CNI_NETNS": f"/run/netns/{server_ns}"}
    env_c = {
        "CNI_IFNAME": "eth0",
        "CNI_CONTAINERID": "vipcli",
        "CNI_NETNS": f"/run/netns/{client_ns}",
    }
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-S", "-c", _SERVER, "from-cni"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rc, out = cni("ADD", _conf(cnienv), env_s)
        assert rc == 0, out
        rc, out = cni("ADD", _conf(cnienv), env_c)
        assert rc == 0, out
        vip = agent.ok("service", "vip", "api").strip()

        def through_vip() -> str:
            res = subprocess.run(
                ["ip", "netns", "exec", client_ns, sys.executable, "-S", "-c", _CONNECT, vip],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            return res.stdout.strip()

        deadline = time.monotonic() + 30  # the TCP check passes, the VIP gets it
        while (got := through_vip()) != "from-cni":
            assert time.monotonic() < deadline, f"the VIP {vip} never reached the backend: {got}"
            time.sleep(0.5)
        rc, _ = cni("DEL", _conf(cnienv), env_s)
        assert rc == 0
        deadline = time.monotonic() + 30
        while (got := through_vip()) == "from-cni":
            assert time.monotonic() < deadline, "the VIP still reaches a DELeted container"
            time.sleep(0.5)
        assert got.startswith("FAIL")
    finally:
        server.kill()
        server.wait()
        cni("DEL", _conf(cnienv), env_s)
        cni("DEL", _conf(cnienv), env_c)


@root
def test_cni_install_writes_the_conflists_of_existing_networks(
    cnienv: dict[str, Any], tmp_path: Path
) -> None:
    if cnienv["runner"] == "shim":
        pytest.skip("no plugin call")
    conf_dir = tmp_path / "net.d"
    out = cnienv["agent"].ok(
        "cni", "install", "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(conf_dir)
    )
    assert str(conf_dir / "50-cove-vnet.conflist") in out
    conf = json.loads((conf_dir / "50-cove-vnet.conflist").read_text())
    assert conf["name"] == "vnet" and conf["plugins"][0]["network"] == "vnet"
