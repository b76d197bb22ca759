"""kill -9 of the agent at random moments during randomized network create/rm,
then a restart: the store and the kernel agree and nothing leaks."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import threading
import time

import pytest

from agentproc import AgentProc
from netutil import sh

pytestmark = pytest.mark.root

OPS = 200


def kernel_bridges() -> dict[str, set[str]]:
    out = json.loads(sh("ip", "-j", "addr", "show", "type", "bridge").stdout or "[]")
    return {
        b["ifname"]: {
            f"{a['local']}/{a['prefixlen']}"
            for a in b.get("addr_info", [])
            if a.get("scope") == "global"
        }
        for b in out
        if b["ifname"].startswith("cv-")
    }


def masqueraded() -> set[str]:
    rules = sh("nft", "-j", "list", "table", "inet", "cove", check=False).stdout
    found: set[str] = set()
    for obj in json.loads(rules or '{"nftables": []}')["nftables"]:
        rule = obj.get("rule")
        if not rule or rule["chain"] != "postrouting":
            continue
        for expr in rule["expr"]:
            prefix = expr.get("match", {}).get("right", {})
            if isinstance(prefix, dict) and "prefix" in prefix:
                found.add(f"{prefix['prefix']['addr']}/{prefix['prefix']['len']}")
    return found


def test_kill9_during_random_ops_converges(agent: AgentProc) -> None:
    rng = random.Random(20261121)
    names = [f"n{i}" for i in range(12)]
    kills = 0
    for i in range(OPS):
        name = rng.choice(names)
        if rng.random() < 0.6:
            body = {"name": name}
            if rng.random() < 0.3:
                body["ipv6"] = True  # type: ignore[assignment]
            call = ("POST", "/api/networks", body)
        else:
            call = ("DELETE", f"/api/networks/{name}", None)
        killer = None
        if i % 10 == 5:
            # Kill while the request is in flight, somewhere in the agent's work.
            delay = rng.uniform(0.0, 0.03)
            killer = threading.Timer(delay, agent.kill9)
            killer.start()
        with contextlib.suppress(OSError):  # the agent may die under the request
            agent.api(*call)
        if killer is not None:
            killer.join()
            kills += 1
            agent.start()
    assert kills == OPS // 10
    agent.kill9()
    agent.start()
    nets = json.loads(agent.ok("network", "ls", "--format", "json"))
    want = {
        n["bridge"]: {
            f"{s['gateway']}/{ipaddress.ip_network(s['subnet']).prefixlen}" for s in n["subnets"]
        }
        for n in nets
    }
    deadline = time.monotonic() + 10
    while kernel_bridges() != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kernel_bridges() == want
    assert masqueraded() == {s["subnet"] for n in nets for s in n["subnets"]}
    subnets = [ipaddress.ip_network(s["subnet"]) for n in nets for s in n["subnets"]]
    for i, a in enumerate(subnets):
        assert not any(a.overlaps(b) for b in subnets[i + 1 :] if a.version == b.version)
    # Everything can still be removed, and then nothing is left.
    for n in nets:
        agent.ok("network", "rm", n["name"])
    assert kernel_bridges() == {} and masqueraded() == set()
