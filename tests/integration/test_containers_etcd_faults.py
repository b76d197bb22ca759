"""``cove run`` with etcd killed mid-request: an error means the container
does not run, now or after etcd returns or the agent restarts; a success
means it runs. (Before, a run could answer "503 etcd is unreachable" and
leave the container running, or started later by a restarted agent.)

The agent stops itself (SIGSTOP, through the test-only fault hook) at a
named point of the run; the test kills etcd by the PID it started, lets the
agent go on, and watches what the user would see."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    assert_no_leaks,
    eventually,
    inspect,
    runtime_cleanup_fixture,
    scripts_fixture,
    tcp,
)

from agentproc import AgentProc
from conftest import cleanup_agent
from etcd_fixture import EtcdProcess, etcd_process

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.usefixtures("runtime_cleanup")]


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] == "T"


def _processes_running(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (this test's script)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline and state[state.rfind(")") + 2] != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("point", ["run:recorded", "run:stored", "run:created", "run:started"])
def test_run_with_etcd_killed_mid_request_is_all_or_nothing(
    hostns: str, tmp_path: Path, scripts: tuple[str, str], point: str
) -> None:
    echo, _ = scripts
    with etcd_process() as etcd:
        agent = AgentProc(hostns, tmp_path, "--store", "etcd://" + etcd.url.removeprefix("http://"))
        try:
            agent.start(env={"COVE_TEST_FAULT": f"{point}=stop"})
            agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
            _check_one_run(agent, etcd, echo, point)
        finally:
            if etcd.proc is not None and etcd.proc.poll() is not None:
                etcd.start()
            if agent.proc is not None and agent.proc.poll() is None:
                os.kill(agent.proc.pid, signal.SIGCONT)
            cleanup_agent(agent)


def _check_one_run(agent: AgentProc, etcd: EtcdProcess, echo: str, point: str) -> None:
    result: dict[str, Any] = {}

    def run() -> None:
        result["res"] = agent.cli("run", "-d", "--name", "x", "--network", "vnet", "--",
                                  "python3", "-S", "-u", echo, "7")  # fmt: skip

    client = threading.Thread(target=run)
    client.start()
    assert agent.proc is not None
    pid = agent.proc.pid
    eventually(lambda: _stopped(pid), timeout=20)
    etcd.kill()
    os.kill(pid, signal.SIGCONT)
    client.join(90)
    res = result["res"]

    if res.returncode != 0:
        # an error: no process now, and none after etcd returns
        assert "etcd" in res.stderr, res.stderr
        # and it says what it left: nothing runs, the record goes once etcd is back
        assert "was not started" in res.stderr, res.stderr
        assert _processes_running(echo) == [], (point, res.stderr)
        etcd.start()
        eventually(lambda: json.loads(agent.ok("ps", "-a", "--format", "json")) == [], timeout=20)
        time.sleep(1)
        assert _processes_running(echo) == []
        # nor after a restart of the agent (which finishes interrupted runs)
        agent.stop()
        agent.start()
        assert json.loads(agent.ok("ps", "-a", "--format", "json")) == []
        time.sleep(1)
        assert _processes_running(echo) == []
        assert_no_leaks(agent, 0)
    else:
        # a success: it runs, and keeps running once etcd is back
        assert len(_processes_running(echo)) == 1
        etcd.start()
        assert inspect(agent, "x")["state"]["status"] == "running"
        addr = address(agent, "x", "vnet")
        assert eventually(lambda: tcp(addr, 7)) == "x:ping"
        agent.stop()
        agent.start()
        assert inspect(agent, "x")["state"]["status"] == "running"
        assert_no_leaks(agent, 1)


@pytest.mark.parametrize("op", ["stop", "start"])
def test_stop_and_start_with_etcd_killed_after_the_supervisor_acted(
    hostns: str, tmp_path: Path, scripts: tuple[str, str], op: str
) -> None:
    echo, _ = scripts
    with etcd_process() as etcd:
        agent = AgentProc(hostns, tmp_path, "--store", "etcd://" + etcd.url.removeprefix("http://"))
        try:
            point = "stop:stopped" if op == "stop" else "start:started"
            agent.start(env={"COVE_TEST_FAULT": f"{point}=stop"})
            agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
            agent.ok("run", "-d", "--name", "x", "--network", "vnet", "--",
                     "python3", "-S", "-u", echo, "7")  # fmt: skip
            if op == "start":
                # the fault is armed for start only: this stop goes through
                agent.ok("stop", "-t", "1", "x")
            before = len(_processes_running(echo))
            result: dict[str, Any] = {}
            client = threading.Thread(target=lambda: result.update(res=agent.cli(op, "x")))
            client.start()
            assert agent.proc is not None
            pid = agent.proc.pid
            eventually(lambda: _stopped(pid), timeout=20)
            etcd.kill()
            os.kill(pid, signal.SIGCONT)
            client.join(90)
            res = result["res"]
            after = len(_processes_running(echo))
            if res.returncode != 0:
                assert after == before, f"{op} failed ({res.stderr}) yet changed the container"
            else:
                assert after == (0 if op == "stop" else 1)
                etcd.start()
                status = inspect(agent, "x")["state"]["status"]
                assert status == ("running" if op == "start" else "exited")
        finally:
            if etcd.proc is not None and etcd.proc.poll() is not None:
                etcd.start()
            if agent.proc is not None and agent.proc.poll() is None:
                os.kill(agent.proc.pid, signal.SIGCONT)
            cleanup_agent(agent)
