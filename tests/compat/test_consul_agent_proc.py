"""The operator endpoints wired into a real `cove agent` (in a host
namespace of its own): /v1/agent/metrics carries the agent's own gauges,
`cove snapshot save|restore` works over the agent's socket, and
/v1/agent/leave stops the agent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

consul = pytest.importorskip("consul")


def test_metrics_snapshot_and_leave_in_the_agent(agent: Any, tmp_path: Path) -> None:
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    names = {g["Name"] for g in c.agent.metrics()["Gauges"]}
    assert {"cove.agent.services", "cove_store_revision", "cove_networks"} <= names
    assert "cove_store_revision " in c.agent.metrics(format_prometheus=True)
    # The agent itself is in its catalog.
    assert [n["ServicePort"] for n in c.catalog.service("consul")[1]] == [8300]

    c.kv.put("proc/snap", "saved")
    backup = tmp_path / "backup.snap"
    agent.ok("snapshot", "save", str(backup))
    c.kv.put("proc/snap", "changed")
    agent.ok("snapshot", "restore", str(backup))
    assert c.kv.get("proc/snap")[1]["Value"] == b"saved"
    bad = agent.cli("snapshot", "restore", "/nonexistent/file")
    assert bad.returncode != 0 and "cannot read" in bad.stderr

    # Reload: no HTTPS here, so nothing to reload, said plainly.
    status, body = agent.api("PUT", "/v1/agent/reload")
    assert status == 500 and "no reloadable configuration" in json.dumps(body)
    assert c.agent.leave()
    end = time.monotonic() + 15
    while agent.proc.poll() is None:
        assert time.monotonic() < end, "the agent did not stop after /v1/agent/leave"
        time.sleep(0.1)
    assert agent.proc.returncode == 0
    assert "leaving: asked through /v1/agent/leave" in agent.log_text()
