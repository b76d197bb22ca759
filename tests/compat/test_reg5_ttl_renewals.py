"""A TTL check renewed many times stays passing through its old deadlines,
expires one TTL after the last renewal, and its renewals do not pile up in
the runner (one pending deadline per check, however often it is renewed).
The runner's clock is a ManualClock the test moves; py-consul talks to it."""

from __future__ import annotations

import time

import consul

from cove.agent.consul import ConsulServer
from cove.clock import ManualClock
from cove.store.memory import MemoryStore


def _status(c: consul.Consul, check_id: str) -> tuple[str, str]:
    got = c.agent.checks()[check_id]
    return got["Status"], got["Output"]


def _wait_status(c: consul.Consul, check_id: str, want: str, deadline: float = 10.0) -> str:
    end = time.monotonic() + deadline
    status, output = _status(c, check_id)
    while status != want and time.monotonic() < end:
        time.sleep(0.05)
        status, output = _status(c, check_id)
    assert status == want, (status, output)
    return output


def test_renewed_ttl_outlives_old_deadlines_then_expires() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    with ConsulServer(store, clock, node_name="ttl") as server:
        assert server.runner is not None and server.state is not None
        server.runner.use_group_commit(server.state.commits)
        c = consul.Consul(host="127.0.0.1", port=server.port)
        assert c.agent.check.register("beat", check=consul.Check.ttl("10s"))
        for n in range(200):
            assert c.agent.check.ttl_pass("beat", notes=f"beat {n}")
            clock.advance(1.0)  # 200 s in all, never 10 s without a renewal
        # Let the runner's sweep (every 0.5 s of real time) see the clock.
        time.sleep(1.5)
        assert _status(c, "beat") == ("passing", "beat 199")
        # Renewals move the one pending deadline; they add no entries.
        assert len(server.runner._ttl_heap) <= 2

        clock.advance(10.5)  # one TTL after the last renewal (1 s ago)
        assert "TTL expired" in _wait_status(c, "beat", "critical")
        assert c.agent.check.ttl_pass("beat", notes="back")
        assert _status(c, "beat") == ("passing", "back")
        clock.advance(5.0)
        time.sleep(1.5)
        assert _status(c, "beat") == ("passing", "back")
        clock.advance(6.0)
        assert "TTL expired" in _wait_status(c, "beat", "critical")
    store.close()
