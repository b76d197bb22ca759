"""Restart policies and the supervisor's records (pure parts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cove.runtime.launch import LaunchSpec
from cove.runtime.state import (
    ProcessState,
    RestartPolicy,
    Status,
    process_start_time,
    read_json,
    write_json,
)


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        (RestartPolicy.NO, 1, False),
        (RestartPolicy.ON_FAILURE, 0, False),
        (RestartPolicy.ON_FAILURE, 137, True),
        (RestartPolicy.ALWAYS, 0, True),
    ],
)
def test_restart_policies(policy: RestartPolicy, code: int, restart: bool) -> None:
    assert policy.wants_restart(code) is restart


def test_records_survive_a_round_trip_on_disk(tmp_path: Path) -> None:
    state = ProcessState("c1", Status.EXITED, exit_code=3, restart_count=2, error="x")
    write_json(tmp_path / "state.json", state.to_json())
    assert ProcessState.from_json(read_json(tmp_path / "state.json") or {}) == state
    spec = LaunchSpec(
        id="c1", name="web", argv=("sleep", "1"), env={"A": "1"}, hostname="web",
        netns="/x", etc_dir="/y", log_path="/z", rootfs=None, restart="always",
    )  # fmt: skip
    assert LaunchSpec.from_json(spec.to_json()) == spec


def test_broken_record_reads_as_missing(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    assert read_json(tmp_path / "state.json") is None


def test_start_time_tells_a_live_pid_from_a_gone_one() -> None:
    assert process_start_time(os.getpid()) > 0
    assert process_start_time(2**22 + 7) == 0
