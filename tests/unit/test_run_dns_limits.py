"""--dns flags in resolv.conf, and -m/--cpus parsing and cgroup files
(written into a directory laid out as the kernel's cgroup tree)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cove.errors import InvalidArgument
from cove.runtime import etc, resources

HOST = "# host\nnameserver 9.9.9.9\nsearch lan\noptions rotate\n"
GW = [ipaddress.ip_address("10.0.0.1")]


def test_no_dns_flags_keep_cove_dns_or_the_host_file() -> None:
    assert etc.resolv_conf(GW, HOST) == "nameserver 10.0.0.1\noptions ndots:0\n"
    assert etc.resolv_conf([], HOST) == HOST


def test_each_dns_flag_replaces_only_its_part() -> None:
    assert etc.resolv_conf(GW, HOST, dns=["1.1.1.1"]) == ("nameserver 1.1.1.1\noptions ndots:0\n")
    assert etc.resolv_conf([], HOST, options=["ndots:3"]) == (
        "nameserver 9.9.9.9\nsearch lan\noptions ndots:3\n"
    )
    assert etc.resolv_conf([], HOST, search=["."]) == "nameserver 9.9.9.9\noptions rotate\n"


def test_memory_and_cpus_parse_as_docker_does() -> None:
    assert resources.parse_memory("64m") == 64 << 20
    assert resources.parse_memory("1g") == 1 << 30
    assert resources.parse_memory("64MB") == 64 << 20
    assert resources.parse_memory("10485760") == 10 << 20
    for bad in ("", "x", "-5m", "1k", "12q"):
        with pytest.raises(InvalidArgument):
            resources.parse_memory(bad)
    assert resources.parse_cpus("0.5", available=2) == 0.5
    for bad in ("0", "-1", "nan", "abc", "3"):
        with pytest.raises(InvalidArgument):
            resources.parse_cpus(bad, available=2)


def test_v1_limits_go_in_memory_and_cpu_groups(tmp_path: Path) -> None:
    for ctl in ("memory", "cpu"):
        (tmp_path / ctl / "cove").mkdir(parents=True)
    # the kernel makes these files in a new group; a plain directory does not
    real_makedirs = resources.os.makedirs

    def makedirs(path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        real_makedirs(path, mode, exist_ok)
        for name in ("memory.limit_in_bytes", "cgroup.procs", "cpu.cfs_period_us",
                     "cpu.cfs_quota_us"):  # fmt: skip
            Path(path, name).touch()

    mp = pytest.MonkeyPatch()
    mp.setattr(resources.os, "makedirs", makedirs)
    try:
        resources.join("c1", resources.Limits(64 << 20, 1.5), str(tmp_path))
    finally:
        mp.undo()
    assert (tmp_path / "memory/cove/c1/memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (tmp_path / "cpu/cove/c1/cpu.cfs_quota_us").read_text() == "150000"
    assert (tmp_path / "cpu/cove/c1/cpu.cfs_period_us").read_text() == "100000"
    assert (tmp_path / "memory/cove/c1/cgroup.procs").read_text() == "0"


def test_a_missing_controller_is_named(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="--cpus needs the cgroup controller"):
        resources.join("c1", resources.Limits(cpus=1.0), str(tmp_path))
