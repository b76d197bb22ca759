"""`cove exec` runs as docker exec does: as the image's USER by default, as
the container's `-u` user when it was started with one, and as `exec -u`
when given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    need_containers,
    runtime_cleanup_fixture,
)

from imageutil import Img, busybox_layer, docker_archive

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


def test_exec_runs_as_the_images_user_unless_told_otherwise(agent: Any, tmp_path: Path) -> None:
    need_containers(agent)
    docker_archive(tmp_path / "u.tar", Img([busybox_layer()], user="app"), "withuser:1")
    agent.ok("image", "load", "-i", str(tmp_path / "u.tar"))

    def ids(*args: str) -> str:
        return agent.ok("exec", *args, "--", "sh", "-c", "echo $(id -u):$(id -g)").strip()

    agent.ok("run", "-d", "--name", "img", "withuser:1", "sleep", "600")
    assert ids("img") == "1000:1000"  # the image's USER app
    assert ids("-u", "0", "img") == "0:0"
    assert ids("-u", "root", "img") == "0:0"
    assert ids("-u", "2000:3000", "img") == "2000:3000"
    # started with -u: that user, for exec too
    agent.ok("run", "-d", "--name", "asroot", "-u", "root", "withuser:1", "sleep", "600")
    assert ids("asroot") == "0:0"
    assert ids("-u", "app", "asroot") == "1000:1000"
    agent.ok("run", "-d", "--name", "num", "-u", "4321", "withuser:1", "sleep", "600")
    assert ids("num") == "4321:0"  # a uid without an entry: group 0, as Docker's
    # a user the image does not have: a clear error, not a root shell
    res = agent.cli("exec", "-u", "nosuch", "img", "--", "id")
    assert res.returncode == 126 and "no user 'nosuch'" in res.stderr
