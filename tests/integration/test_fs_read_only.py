"""`--read-only` for a container without an image: its private /tmp, /run,
/var/tmp and /root become read-only too (as the rest of the host's tree
already is), except where a --tmpfs or a volume is mounted (Docker's
meaning)."""

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

_WRITES = (
    "for d in /tmp /run /var/tmp /root; do touch $d/f 2>/dev/null && echo $d:rw || echo $d:ro; done"
)


def _run(agent: Any, *args: str) -> tuple[int, str]:
    name = agent.ok("run", "-d", *args).strip()
    eventually(lambda: inspect(agent, name)["state"]["status"] == "exited")
    return inspect(agent, name)["state"]["exit_code"], agent.output(name)


def test_read_only_makes_the_private_directories_read_only(agent: Any, tmp_path: Path) -> None:
    need_containers(agent)
    assert _run(agent, "--", "sh", "-c", _WRITES)[1].split() == [
        "/tmp:rw", "/run:rw", "/var/tmp:rw", "/root:rw",
    ]  # fmt: skip
    code, out = _run(agent, "--read-only", "--", "sh", "-c", f"{_WRITES}; touch /tmp/x")
    assert out.split("\n")[:4] == ["/tmp:ro", "/run:ro", "/var/tmp:ro", "/root:ro"]
    assert "Read-only file system" in out and code != 0
    # /etc/hosts and friends stay the container's (Docker's too)
    code, out = _run(agent, "--read-only", "--", "sh", "-c", "cat /etc/hostname")
    assert code == 0 and out.strip()


def test_tmpfs_and_volumes_stay_writable_under_read_only(agent: Any, tmp_path: Path) -> None:
    need_containers(agent)
    data = tmp_path / "data"
    data.mkdir()
    script = f"{_WRITES}; echo t > /tmp/sub/t && cat /tmp/sub/t; echo v > /root/data/v && echo vok"
    code, out = _run(agent, "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run/sub",
                     "-v", f"{data}:/root/data", "--", "sh", "-c",
                     script.replace("/tmp/sub/t", "/run/sub/t"))  # fmt: skip
    assert out.split() == ["/tmp:rw", "/run:ro", "/var/tmp:ro", "/root:ro", "t", "vok"]
    assert code == 0
    assert (data / "v").read_text() == "v\n"
