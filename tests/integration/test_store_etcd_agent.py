"""Real agents keeping their state in etcd: what one agent writes, another
agent with an empty state directory sees (the multi-host premise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentproc import AgentProc
from cove.agent.teardown import teardown
from cove.clock import SystemClock
from cove.store import EtcdStore
from etcd_fixture import run_etcd

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def test_agents_share_networks_through_etcd(hostns: str, tmp_path: Path) -> None:
    # etcd is started from the test thread, so it lives in the test's host
    # namespace and listens on that namespace's loopback only.
    with run_etcd() as url:
        store_url = "etcd://" + url.removeprefix("http://")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = AgentProc(hostns, tmp_path / "a", "--store", store_url)
        second = AgentProc(hostns, tmp_path / "b", "--store", store_url)
        # Two "hosts" in one namespace: the first one's supervisor keeps its
        # DNS listeners while its agent is stopped, so the second one uses
        # other ports.
        second.http_port, second.dns_port = 8510, 8610
        try:
            first.start()
            first.ok("network", "create", "shared", "--subnet", "10.89.40.0/24")
            first.stop()

            store = EtcdStore([url], SystemClock())
            kv = store.get("networks/shared")
            store.close()
            assert kv is not None and b"10.89.40.0/24" in kv.value

            second.start()  # a fresh state dir: everything comes from etcd
            assert "shared" in second.ok("network", "ls", "-q").split()
            (net,) = json.loads(second.ok("network", "inspect", "shared"))
            assert net["subnets"][0]["subnet"] == "10.89.40.0/24"
            second.ok("network", "rm", "shared")
        finally:
            second.stop()
            first.stop()
            teardown(second.state_dir / "run")
            teardown(first.state_dir / "run")
        store = EtcdStore([url], SystemClock())
        assert store.get("networks/shared") is None
        store.close()
