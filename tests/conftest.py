"""Shared fixtures.

Root fixtures: ``hostns`` switches the test's thread into a fresh network
namespace that plays the host (every process the test starts lives there);
``agent`` runs a real `cove agent` in it. Both clean up even when the test
fails: processes in the namespace are killed, the namespace is removed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import nsutil
from agentproc import AgentProc
from cluster import cluster3  # noqa: F401 - the three-host fixture (tests/cluster.py)
from cove.agent.teardown import teardown

# A container without an image gets a private /tmp, /var/tmp, /run and
# /root and sees the rest of the host read-only: test files (scripts the
# containers run) live where it can read them. Writes go through -v.
if os.geteuid() == 0:
    os.makedirs("/var/lib/cove-tests", 0o755, exist_ok=True)
    os.environ["TMPDIR"] = "/var/lib/cove-tests"
    tempfile.tempdir = None


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def hostns() -> Iterator[str]:
    _need_root()
    with nsutil.namespace("cvh") as name, nsutil.entered(name):
        yield name


@pytest.fixture
def agent(hostns: str, tmp_path: Path) -> Iterator[AgentProc]:
    proc = AgentProc(hostns, tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        cleanup_agent(proc)


def cleanup_agent(proc: AgentProc) -> None:
    """Remove what the agent made (containers first), then stop it."""
    if proc.proc is not None and proc.proc.poll() is None:
        res = proc.cli("ps", "-aq")
        if res.returncode == 0:
            for name in res.stdout.split():
                proc.cli("rm", "-f", name)
        proc.cli("network", "prune")
    proc.stop()
    # Containers live in namespaces of their own, not the test's: end them,
    # their supervisor and their namespace mounts explicitly.
    teardown(proc.state_dir / "run")
