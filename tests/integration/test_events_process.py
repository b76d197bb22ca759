"""A container's process in a real agent's event stream, as Docker shows
it: a process that exits on its own is a ``die`` event with its exit code
within about a second, a restart under the policy is ``die`` then
``restart``, and ``cove stop`` gives one ``die``, not two."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    need_containers,
    runtime_cleanup_fixture,
)

from agentproc import AgentProc
from conftest import cleanup_agent

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


@pytest.fixture
def ctr(hostns: str, tmp_path: Path) -> Iterator[AgentProc]:
    """An agent whose periodic passes (the old way an exit reached the
    store) are far apart, so only a prompt publish passes these tests."""
    agent = AgentProc(hostns, tmp_path, "--reconcile-interval", "30")
    agent.start()
    try:
        need_containers(agent)
        yield agent
    finally:
        cleanup_agent(agent)


def _events(agent: AgentProc, since: int, name: str) -> list[dict[str, Any]]:
    query = f"since={since}&stream=0&filter=type=container&filter=name={name}"
    status, body = agent.api("GET", f"/api/events?{query}")
    assert status == 200, body
    return list(body["events"])


def _head(agent: AgentProc) -> int:
    status, body = agent.api("GET", "/api/events?stream=0")
    assert status == 200, body
    return int(body["index"])


def _actions(events: list[dict[str, Any]]) -> list[str]:
    return [e["action"] for e in events if e["action"] in ("start", "die", "restart")]


def _wait_for(
    agent: AgentProc, since: int, name: str, actions: list[str], timeout: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        events = _events(agent, since, name)
        if _actions(events) == actions or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_a_container_that_exits_on_its_own_is_a_die_with_its_exit_code(ctr: AgentProc) -> None:
    since = _head(ctr)
    ctr.ok("run", "-d", "--name", "three", "--", "sh", "-c", "sleep 0.5; exit 3")
    ran = time.monotonic()
    events = _wait_for(ctr, since, "three", ["start", "die"], timeout=10)
    took = time.monotonic() - ran
    assert _actions(events) == ["start", "die"], events
    die = next(e for e in events if e["action"] == "die")
    assert die["type"] == "container" and die["name"] == "three"
    assert die["attributes"]["exitCode"] == "3"
    # Told as it happens (0.5 s after the run), not at the next periodic
    # pass (every 30 s here, 15 s by default).
    assert took < 2.0, f"the die event came {took:.2f}s after the run"
    # The same through the CLI.
    res = ctr.cli("events", "--no-stream", "--since", str(since), "--format", "json",
                  "--filter", "action=die")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert '"exitCode":"3"' in res.stdout.replace(" ", ""), res.stdout


def test_a_restart_under_the_policy_is_die_then_restart(ctr: AgentProc) -> None:
    since = _head(ctr)
    ctr.ok("run", "-d", "--name", "flaky", "--restart", "on-failure:1", "--",
           "sh", "-c", "sleep 0.5; exit 1")  # fmt: skip
    want = ["start", "die", "restart", "die"]
    events = _wait_for(ctr, since, "flaky", want, timeout=10)
    assert _actions(events) == want, events
    assert [e["attributes"]["exitCode"] for e in events if e["action"] == "die"] == ["1", "1"]


def test_cove_stop_gives_one_die(ctr: AgentProc) -> None:
    since = _head(ctr)
    ctr.ok("run", "-d", "--name", "long", "--", "sleep", "600")
    ctr.ok("stop", "-t", "1", "long")
    stopped = time.monotonic()
    events = _wait_for(ctr, since, "long", ["start", "die"], timeout=5)
    assert _actions(events) == ["start", "die"], events
    # The stop itself is still told as before: the desired state changes.
    assert any(
        e["action"] == "update" and e["attributes"].get("desired") == "stopped" for e in events
    ), events
    # And nothing more comes of it (no second die from a later publish).
    time.sleep(max(0.0, 2.0 - (time.monotonic() - stopped)))
    assert _actions(_events(ctr, since, "long")) == ["start", "die"]
