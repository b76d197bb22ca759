"""The agent's descriptor budget: started under systemd's default soft
limit of 1024 open files, it raises its own limit to the hard one."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentproc import AgentProc
from conftest import cleanup_agent


@pytest.fixture
def low_limit_agent(hostns: str, tmp_path: Path) -> Iterator[AgentProc]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"hard open-file limit {hard} leaves nothing to raise")
    proc = AgentProc(hostns, tmp_path)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the agent inherits it
    try:
        proc.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield proc
    finally:
        cleanup_agent(proc)


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file line in /proc/PID/limits")


def test_agent_raises_its_open_file_limit(low_limit_agent: AgentProc) -> None:
    assert low_limit_agent.proc is not None
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert _soft_limit(low_limit_agent.proc.pid) > 1024
    if hard != resource.RLIM_INFINITY:
        assert _soft_limit(low_limit_agent.proc.pid) == hard
    assert "open-file limit raised from 1024" in low_limit_agent.log_text()
