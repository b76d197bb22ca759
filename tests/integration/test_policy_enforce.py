"""Network policy in the kernel: six containers on one default-deny bridge;
every allowed pair connects and every denied pair fails, as ``policy test``
predicts; rules follow containers that come later."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_lb_topology import Topo, topology

from cove.clock import SystemClock
from cove.datapath.nftables import Nft
from cove.model import Endpoint, Network, Subnet
from cove.policy.controller import PolicyController
from cove.policy.service import PolicyService
from cove.store import MemoryStore
from cove.store.hub import WatchHub

pytestmark = pytest.mark.root

PORTS = (8080, 9090)

PROBE = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(':', 1)
    try:
        c = socket.create_connection((host, int(port)), timeout=1.5)
        ok = c.recv(100).decode().split(' ')[0]
        c.close()
    except OSError as e:
        ok = 'FAIL ' + type(e).__name__
    out[target] = ok
print(json.dumps(out))
"""

# name -> (host number, labels, services)
CONTAINERS: dict[str, tuple[int, dict[str, str], tuple[str, ...]]] = {
    "web1": (11, {"app": "web"}, ("web:8080",)),
    "web2": (12, {"app": "web"}, ("web:8080",)),
    "api": (13, {"app": "api"}, ("api:8080",)),
    "db": (14, {"app": "db"}, ("db:9090",)),
    "cache": (15, {"app": "cache"}, ()),
    "stranger": (16, {}, ()),
}


def allowed(src: str, dst: str, port: int) -> bool:
    """The rules below, written out by hand."""
    if src.startswith("web") and dst == "api" and port == 8080:
        return True
    if src == "api" and dst == "db" and port == 9090:
        return True
    return src == "cache"


def add_container(store: MemoryStore, topo: Topo, name: str) -> None:
    host, labels, services = CONTAINERS.get(name, (17, {"app": "web"}, ("web:8080",)))
    topo.add(name, host)
    for port in PORTS:
        topo.serve(name, port)
    # The labels ride on the endpoint, as the runtime writes it: policy
    # reads no container record.
    ep = Endpoint(
        id=name, network="pn", container_id=name, container_name=name, interface="eth0",
        host_veth="", mac="", ipv4=ipaddress.IPv4Address(topo.addresses[name]), services=services,
        labels=labels,
    )  # fmt: skip
    store.put(f"endpoints/pn/{name}", json.dumps(ep.to_json()).encode())


def probe(topo: Topo, src: str, dsts: list[str]) -> dict[str, str]:
    targets = [f"{topo.addresses[d]}:{p}" for d in dsts for p in PORTS]
    res = subprocess.run(
        ["ip", "netns", "exec", topo.containers[src], sys.executable, "-c", PROBE, *targets],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return dict(json.loads(res.stdout))


@pytest.fixture
def lab(hostns: str) -> Iterator[tuple[Topo, MemoryStore, PolicyController, PolicyService]]:
    store = MemoryStore(SystemClock())
    nft = Nft()
    ctl = PolicyController(store, nft, clock=SystemClock())
    with topology(78) as topo:
        net = Network(
            id="pn", name="pn", bridge=topo.bridge, default_deny=True,
            subnets=(Subnet(ipaddress.ip_network("10.78.0.0/24"),
                            ipaddress.ip_address("10.78.0.1")),),
        )  # fmt: skip
        store.put("networks/pn", json.dumps(net.to_json()).encode())
        hub = WatchHub(store)
        hub.start()
        ctl.start(hub)
        try:
            yield topo, store, ctl, PolicyService(store, SystemClock())
        finally:
            ctl.stop()
            hub.stop()
            nft.delete_table("inet", "cove_policy")
            store.close()


def test_six_containers_allowed_pairs_connect_and_denied_pairs_fail(
    lab: tuple[Topo, MemoryStore, PolicyController, PolicyService],
) -> None:
    topo, store, ctl, policy = lab
    assert ctl.warning is None
    for name in CONTAINERS:
        add_container(store, topo, name)
    policy.allow("pn", "app=web", "app=api", ["8080/tcp"])
    policy.allow("pn", "api", "service:db", ["9090"])
    policy.allow("pn", "cache", "*")
    assert ctl.wait_applied(store.revision, 5)
    names = list(CONTAINERS)
    mismatches = []
    for src in names:
        got = probe(topo, src, [d for d in names if d != src])
        for dst in names:
            if dst == src:
                continue
            for port in PORTS:
                reached = got[f"{topo.addresses[dst]}:{port}"]
                want = allowed(src, dst, port)
                if (reached == dst) != want:
                    mismatches.append((src, dst, port, reached))
                (verdict,) = policy.test(src, dst, str(port))
                if verdict.decision.allowed != want:
                    mismatches.append((src, dst, port, "policy test: " + verdict.decision.reason))
    assert not mismatches
    # A denied pair fails at once with a reset, not a timeout.
    assert probe(topo, "stranger", ["api"])[f"{topo.addresses['api']}:8080"] == (
        "FAIL ConnectionRefusedError"
    )


def test_rules_follow_new_containers_and_default_deny_switches(
    lab: tuple[Topo, MemoryStore, PolicyController, PolicyService],
) -> None:
    topo, store, ctl, policy = lab
    for name in ("api", "stranger"):
        add_container(store, topo, name)
    policy.allow("pn", "app=web", "api", ["8080"])
    assert ctl.wait_applied(store.revision, 5)
    api = f"{topo.addresses['api']}:8080"
    assert probe(topo, "stranger", ["api"])[api].startswith("FAIL")
    add_container(store, topo, "web3")  # labelled app=web
    assert ctl.wait_applied(store.revision, 5)
    assert probe(topo, "web3", ["api"])[api] == "api"
    (verdict,) = policy.test("web3", "api", "8080/tcp")
    assert verdict.decision.allowed and verdict.decision.rule
    # Off: everything passes; on again: denied again.
    policy.set_default_deny("pn", False)
    assert ctl.wait_applied(store.revision, 5)
    assert probe(topo, "stranger", ["api"])[api] == "api"
    policy.set_default_deny("pn", True)
    assert ctl.wait_applied(store.revision, 5)
    assert probe(topo, "stranger", ["api"])[api].startswith("FAIL")
    # The host itself (not a container) is not subject to east-west policy.
    host = subprocess.run(
        [sys.executable, "-c", PROBE, api], capture_output=True, text=True, check=True
    )
    assert json.loads(host.stdout)[api] == "api"


LOOP = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = tries = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    tries += 1
    try:
        c = socket.create_connection((host, port), timeout=0.5)
        if c.recv(100):
            ok += 1
        c.close()
    except OSError:
        pass
    time.sleep(0.005)
print(ok, tries)
"""


def test_agent_restart_never_lets_denied_traffic_through(
    lab: tuple[Topo, MemoryStore, PolicyController, PolicyService],
) -> None:
    topo, store, ctl, policy = lab
    for name in ("api", "stranger", "web1"):
        add_container(store, topo, name)
    policy.allow("pn", "app=web", "api")
    assert ctl.wait_applied(store.revision, 5)
    api = topo.addresses["api"]
    loop = subprocess.Popen(
        ["ip", "netns", "exec", topo.containers["stranger"], sys.executable, "-c", LOOP,
         api, "8080", "3"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Stop and start "the agent's" policy part a few times while it probes.
    hub = WatchHub(store)
    hub.start()
    for _ in range(4):
        ctl.stop()
        ctl = PolicyController(store, Nft(), clock=SystemClock())
        ctl.start(hub)
    ctl.stop()
    hub.stop()
    out, _ = loop.communicate(timeout=30)
    ok, tries = map(int, out.split())
    assert tries > 50 and ok == 0
    assert probe(topo, "web1", ["api"])[f"{api}:8080"] == "api"


def test_policy_applies_behind_a_vip_and_a_backend_reaches_itself(
    lab: tuple[Topo, MemoryStore, PolicyController, PolicyService],
) -> None:
    from cove.datapath.libnft import open_nft
    from cove.lb.backends import EndpointBackends
    from cove.lb.controller import LbController
    from cove.lb.vips import VipService

    topo, store, ctl, policy = lab
    for name in ("api", "stranger", "web1"):
        add_container(store, topo, name)
    policy.allow("pn", "app=web", "service:api", ["8080"])
    nft = open_nft()
    lb = LbController(store, nft, EndpointBackends(store), clock=SystemClock())
    hub = WatchHub(store)
    hub.start()
    lb.start(hub)
    try:
        vip = str(VipService(store).assign("api").address)
        assert lb.wait_applied(store.revision, 5) and ctl.wait_applied(store.revision, 5)
        target = f"{vip}:8080"
        probes = {
            "web1": "api",  # allowed by the rule, after DNAT
            # Denied: the backend's policy holds. (The reset the forward hook
            # sends after DNAT does not find its way back; the client times out.)
            "stranger": "FAIL",
            "api": "api",  # hairpin: a backend reaching itself through its VIP
        }
        for src, want in probes.items():
            res = subprocess.run(
                ["ip", "netns", "exec", topo.containers[src], sys.executable, "-c", PROBE, target],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            assert json.loads(res.stdout)[target].startswith(want), src
    finally:
        lb.stop()
        hub.stop()
        nft.delete_table("inet", "cove_lb")
