"""A container without an image (`cove run -- CMD`) sees the host's tree
read-only, with private writable /tmp, /run, /var/tmp and /root (as
systemd's ProtectSystem=strict), and never the agent's files; -v makes a
host directory writable where that is the intent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


def _run(agent: Any, *args: str) -> tuple[int, str]:
    name = agent.ok("run", "-d", *args).strip()
    eventually(lambda: inspect(agent, name)["state"]["status"] == "exited")
    return inspect(agent, name)["state"]["exit_code"], agent.ok("logs", name)


def test_the_host_tree_is_read_only_and_tmp_is_private(agent: Any, tmp_path: Path) -> None:
    need_containers(agent)
    host_tmp = tmp_path / "visible-on-host"
    host_tmp.write_text("host\n")
    probe = Path("/etc") / f"cove-probe-{tmp_path.name}"
    script = (
        f"touch {probe} 2>&1; touch /usr/cove-probe 2>&1; "
        "echo private > /tmp/p && cat /tmp/p; ls /tmp | wc -l; "
        "touch /run/r /var/tmp/v /root/r && echo writable; "
        f"cat {host_tmp} 2>&1; ls -A {agent.state_dir} 2>/dev/null | wc -l; "
        f"test -S {agent.socket} && echo socket-visible; cat /etc/hostname"
    )
    code, out = _run(agent, "--name", "light", "--", "sh", "-c", script)
    lines = out.splitlines()
    assert "Read-only file system" in lines[0] and "Read-only file system" in lines[1]
    assert lines[2:5] == ["private", "1", "writable"]
    assert "No such file" in lines[5]  # the host's /tmp is not the container's
    assert lines[6] == "0"  # the agent's state directory: empty
    assert "socket-visible" not in out and lines[-1] == "light"
    assert code == 0
    assert not probe.exists() and not Path("/usr/cove-probe").exists()
    assert not Path("/tmp/p").exists()


def test_a_volume_makes_a_host_directory_writable(agent: Any, tmp_path: Path) -> None:
    need_containers(agent)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out = _run(agent, "-v", f"{out_dir}:{out_dir}", "--", "sh", "-c",
                     f"echo kept > {out_dir}/f && cat {out_dir}/f")  # fmt: skip
    assert (code, out) == (0, "kept\n")
    assert (out_dir / "f").read_text() == "kept\n"
    # a mount point the read-only host lacks cannot be made
    res = agent.cli("run", "-d", "-v", f"{out_dir}:/no-such-dir-here", "--", "true")
    assert res.returncode != 0 and "does not exist" in res.stderr
