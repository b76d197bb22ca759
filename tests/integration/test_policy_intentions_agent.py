"""Consul intentions enforced in the kernel, through a real agent: two
containers registered as services web and db on a default-deny network; an
allow intention lets web reach db, deleting it (or a deny) blocks it again;
``cove policy test`` names the intention; /metrics counts the drops."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    eventually,
    need_containers,
    run_echo,
    runtime_cleanup_fixture,
    scripts_fixture,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

PORT = "7"


def consul(agent: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{agent.http_port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def reaches(agent: Any, client: str, src: str, dst_addr: str) -> bool:
    res = agent.cli("exec", src, "--", "python3", "-S", client, "tcp", PORT, dst_addr)
    return res.returncode == 0 and res.stdout.strip() == "db:ping"


def drops(agent: Any, network: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.http_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    pattern = rf'^cove_policy_drops_total\{{network="{network}",rule="default"\}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else -1.0


def test_intentions_open_and_close_traffic_between_registered_services(
    agent: Any, scripts: tuple[str, str]
) -> None:
    echo, client = scripts
    need_containers(agent)
    agent.ok("network", "create", "inet", "--subnet", "10.93.0.0/24", "--default-deny")
    run_echo(agent, "db", echo, "--network", "inet")
    agent.ok("run", "-d", "--name", "web", "--network", "inet", "--", "sleep", "600")
    db_addr, web_addr = address(agent, "db", "inet"), address(agent, "web", "inet")
    for name, addr in (("web", web_addr), ("db", db_addr)):
        status, _ = consul(
            agent,
            "PUT",
            "/v1/agent/service/register",
            {"Name": name, "ID": name, "Address": addr, "Port": int(PORT)},
        )
        assert status == 200
    # Default deny: no intention, no traffic, and the drop is counted.
    eventually(lambda: drops(agent, "inet") >= 0)
    before = drops(agent, "inet")
    assert not reaches(agent, client, "web", db_addr)
    assert drops(agent, "inet") > before

    status, _ = consul(
        agent, "PUT", "/v1/connect/intentions/exact?source=web&destination=db", {"Action": "allow"}
    )
    assert status == 200
    _, got = consul(agent, "GET", "/v1/connect/intentions/exact?source=web&destination=db")
    iid = got["ID"]
    assert eventually(lambda: reaches(agent, client, "web", db_addr))
    res = agent.cli("policy", "test", "--from", "web", "--to", "db", "--port", PORT)
    assert res.returncode == 0, res.stderr
    assert f"allowed by intention web => db (id {iid}" in res.stdout

    # A deny with higher precedence than nothing: blocked, and explained.
    status, _ = consul(
        agent, "PUT", "/v1/connect/intentions/exact?source=web&destination=db", {"Action": "deny"}
    )
    assert status == 200
    assert eventually(lambda: not reaches(agent, client, "web", db_addr))
    res = agent.cli("policy", "test", "--from", "web", "--to", "db", "--port", PORT)
    assert res.returncode == 1 and f"denied by intention web => db (id {iid}" in res.stdout

    # Allow again, then delete: blocked again by the network's default deny.
    consul(
        agent, "PUT", "/v1/connect/intentions/exact?source=web&destination=db", {"Action": "allow"}
    )
    assert eventually(lambda: reaches(agent, client, "web", db_addr))
    assert consul(agent, "DELETE", f"/v1/connect/intentions/{iid}") == (200, True)
    assert eventually(lambda: not reaches(agent, client, "web", db_addr))
    res = agent.cli("policy", "test", "--from", "web", "--to", "db", "--port", PORT)
    assert res.returncode == 1 and "denied by default on network 'inet'" in res.stdout
