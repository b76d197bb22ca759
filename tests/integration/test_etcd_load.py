"""Scale by design: what an idle agent costs etcd, counted on etcd's side.

An agent with nothing to do must not poll the store: sessions expire from
deadlines kept in memory, safety-net passes reuse what the watch already
delivered. What remains is the leases' keep-alives and the odd read. Before
this was designed, an idle agent made about 184 requests a minute (172 of
them reads: the session sweep alone re-read every session twice a second).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentproc import AgentProc
from conftest import cleanup_agent
from etcd_fixture import etcd_process

WINDOW = 20.0  # seconds counted
# Requests a minute an idle agent may make. Measured: 36 to 60 (36 lease
# keep-alives, the node record's and serfHealth's at the default 10 s TTL,
# and a few safety-net reads); the polling agent before made about 650
# (about 230 with no session; each session added reads twice a second).
BOUND = 100.0


@pytest.mark.root
def test_an_idle_agent_costs_etcd_little(hostns: str, tmp_path: Path) -> None:
    with etcd_process() as member:
        agent = AgentProc(hostns, tmp_path, "--store", f"etcd://{member.hostport}")
        try:
            agent.start()
            agent.ok("network", "create", "idle", "--subnet", "10.89.78.0/24")
            # A session with a TTL holding a lock: what the session reaper follows.
            status, made = agent.api("PUT", "/v1/session/create", {"TTL": "60s"})
            assert status == 200, made
            status, held = agent.api("PUT", f"/v1/kv/idle/lock?acquire={made['ID']}", "me")
            assert status == 200 and held is True, held
            time.sleep(3)  # what the commands started is done
            before = member.metrics()
            time.sleep(WINDOW)
            load = member.metrics() - before
            per_minute = load.requests * 60 / WINDOW
            assert per_minute <= BOUND, (
                f"an idle agent makes {per_minute:.0f} etcd requests a minute: {load.calls}"
            )
            # Still alive and still holding its lock: nothing was cut to get there.
            status, info = agent.api("GET", f"/v1/session/info/{made['ID']}")
            assert status == 200 and info and info[0]["ID"] == made["ID"], info
        finally:
            cleanup_agent(agent)


@pytest.mark.root
def test_a_session_ends_when_its_check_fails_without_polling(hostns: str, tmp_path: Path) -> None:
    """The reaper learns of the failed check from the watch, on etcd: the
    lock the session held is released within a second or two."""
    with etcd_process() as member:
        agent = AgentProc(hostns, tmp_path, "--store", f"etcd://{member.hostport}")
        try:
            agent.start()
            svc = {
                "Name": "db",
                "ID": "db1",
                "Port": 5432,
                "Check": {"CheckID": "db-ttl", "TTL": "60s"},
            }
            assert agent.api("PUT", "/v1/agent/service/register", svc)[0] == 200
            assert agent.api("PUT", "/v1/agent/check/pass/db-ttl")[0] == 200
            body = {"NodeChecks": [], "ServiceChecks": [{"ID": "db-ttl"}]}
            status, made = agent.api("PUT", "/v1/session/create", body)
            assert status == 200, made
            status, held = agent.api("PUT", f"/v1/kv/db/leader?acquire={made['ID']}", "me")
            assert status == 200 and held is True, held
            time.sleep(1)
            status, info = agent.api("GET", f"/v1/session/info/{made['ID']}")
            assert status == 200 and info, "a passing check must not end the session"

            assert agent.api("PUT", "/v1/agent/check/fail/db-ttl")[0] == 200
            deadline = time.monotonic() + 5
            while True:
                status, info = agent.api("GET", f"/v1/session/info/{made['ID']}")
                if status == 200 and not info:
                    break
                assert time.monotonic() < deadline, agent.log_text()
                time.sleep(0.1)
            status, entries = agent.api("GET", "/v1/kv/db/leader")
            assert status == 200 and not entries[0].get("Session"), entries
        finally:
            cleanup_agent(agent)
