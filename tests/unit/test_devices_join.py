"""``devices.join``: a process is moved into cove's devices group unless it
was born there (the supervisor joins once; each move of a container's
process waited ~10 ms for the kernel). A cgroup tree of plain files
stands in for /sys/fs/cgroup/devices."""

from __future__ import annotations

from pathlib import Path

from cove.runtime import devices


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "devices.allow").write_text("")
    group = tmp_path / devices.GROUP
    group.mkdir()
    for name in ("devices.allow", "devices.deny", "cgroup.procs"):
        (group / name).write_text("")
    (group / "devices.list").write_text("c 1:3 rwm\n")
    return group / "cgroup.procs"


def test_a_process_not_known_to_be_in_the_group_is_moved(tmp_path: Path) -> None:
    procs = _tree(tmp_path)
    assert devices.join(str(tmp_path))
    assert procs.read_text() == "0"


def test_a_process_still_where_its_parent_joined_is_not_moved(tmp_path: Path) -> None:
    procs = _tree(tmp_path)
    assert devices.join(str(tmp_path), joined=devices.member_of())
    assert procs.read_text() == ""


def test_a_process_elsewhere_than_its_parent_joined_is_moved(tmp_path: Path) -> None:
    procs = _tree(tmp_path)
    assert devices.join(str(tmp_path), joined="/not/where/this/process/is")
    assert procs.read_text() == "0"


def test_the_devices_group_is_read_from_the_cgroup_file(tmp_path: Path) -> None:
    cgroups = tmp_path / "cgroup"
    cgroups.write_text("5:devices:/cove\n4:memory:/x\n0::/\n")
    assert devices.member_of(str(cgroups)) == "/cove"
    cgroups.write_text("0::/only-v2\n")
    assert devices.member_of(str(cgroups)) == ""
    assert devices.member_of(str(tmp_path / "missing")) == ""
