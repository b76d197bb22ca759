"""`cove image load`, `cove run IMAGE` and `cove rmi` through a real agent:
the image's entrypoint, cmd, env, workdir and user applied, its root all
the container sees, whiteouts honoured, -v/--tmpfs/--read-only, and the
errors a Docker user expects (exit 125)."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

from agentproc import COVE
from imageutil import Img, Layer, busybox_layer, docker_archive, oci_archive

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


def _image() -> Img:
    base = busybox_layer()
    base.entries.update({"srv": None, "srv/www": None, "srv/www/old": b"old\n",
                         "etc/gone": b"x\n"})  # fmt: skip
    top = Layer({"etc/.wh.gone": b"", "srv/www/.wh..wh..opq": b"", "srv/www/index": b"hi\n"})
    return Img([base, top], entrypoint=["/bin/sh", "-c"], cmd=["echo default; pwd; id -u"],
               workdir="/srv", user="app")  # fmt: skip


@pytest.fixture
def images(agent: Any, tmp_path: Path) -> Any:
    need_containers(agent)
    docker_archive(tmp_path / "app.tar", _image(), "app:1")
    oci_archive(tmp_path / "plain.tar", Img([busybox_layer()], cmd=["sh"]), "localhost/bb:latest")
    out = agent.ok("image", "load", "-i", str(tmp_path / "app.tar"))
    assert out == "Loaded image: app:1\n"  # not a terminal: no progress
    assert agent.ok("image", "load", "-i", str(tmp_path / "plain.tar")) == (
        "Loaded image: localhost/bb:latest\n"
    )
    return agent


def _run(agent: Any, *args: str) -> tuple[int, str]:
    """``run -d`` then the container's exit code and output (its stdout,
    then its stderr: ``cove logs`` keeps them apart, as docker does)."""
    name = agent.ok("run", "-d", *args).strip()
    eventually(lambda: inspect(agent, name)["state"]["status"] == "exited")
    logs = agent.cli("logs", name)
    assert logs.returncode == 0, logs.stderr
    return inspect(agent, name)["state"]["exit_code"], logs.stdout + logs.stderr


def test_run_applies_the_image_config(images: Any) -> None:
    listing = images.ok("images")
    assert "app" in listing and "localhost/bb" in listing and "IMAGE ID" in listing
    # entrypoint + cmd, workdir, user (app is uid 1000 in the image's passwd)
    assert _run(images, "app:1") == (0, "default\n/srv\n1000\n")
    # a command replaces cmd and follows the entrypoint; env from the image
    assert _run(images, "app:1", "echo $GREETING $HOSTNAME")[1].startswith("from-image ")
    assert _run(images, "-e", "GREETING=mine", "-w", "/tmp", "app:1", "echo $GREETING; pwd") == (
        0, "mine\n/tmp\n",
    )  # fmt: skip
    # bb (no registry named): found as localhost/bb; whiteouts: gone, opaque
    code, out = _run(images, "bb", "sh", "-c", "ls /; cat /etc/os-release")
    assert code == 0 and set(out.split()) == {
        "bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "NAME=cove-test",
    }  # fmt: skip
    code, out = _run(images, "app:1", "ls /srv/www; ls /etc")
    assert code == 0 and out.split()[0] == "index" and "gone" not in out.split()
    assert "passwd" in out.split()


def test_the_container_sees_only_its_image(images: Any, tmp_path: Path) -> None:
    marker = tmp_path / "host-only"
    marker.write_text("host\n")
    code, out = _run(images, "bb", "sh", "-c",
                     f"ls {marker}; ls /; echo x > /etc/written; cat /etc/hostname")  # fmt: skip
    assert code == 0
    assert "No such file" in out  # the host's files are not there
    assert "usr" not in out.split() and "bin" in out.split()
    assert not Path("/etc/written").exists()  # writes stay in the container's layer
    # the image itself is unchanged: a new container does not see the write
    assert _run(images, "bb", "sh", "-c", "cat /etc/written")[0] != 0
    # /proc is the container's own; /sys is read-only
    code, out = _run(images, "bb", "sh", "-c", "echo $$; touch /sys/x 2>&1; ls /dev")
    lines = out.split("\n")
    assert lines[0] == "1" and "Read-only" in lines[1]
    assert {"null", "zero", "urandom", "tty", "pts", "shm"} <= set(out.split())


def test_volumes_tmpfs_and_read_only(images: Any, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host\n")
    code, out = _run(images, "-v", f"{shared}:/data", "--tmpfs", "/scratch", "bb", "sh", "-c",
                     "cat /data/in; echo back > /data/out; echo t > /scratch/t && cat /scratch/t; "
                     "grep -c ' /scratch tmpfs' /proc/mounts")  # fmt: skip
    assert (code, out) == (0, "from host\nt\n1\n")
    assert (shared / "out").read_text() == "back\n"
    code, out = _run(images, "-v", f"{shared}:/data:ro", "bb", "sh", "-c",
                     "cat /data/in; echo no > /data/x")  # fmt: skip
    assert code != 0 and out.startswith("from host\n") and "Read-only" in out
    assert not (shared / "x").exists()
    code, out = _run(images, "--read-only", "--mount", f"type=bind,source={shared},target=/w",
                     "bb", "sh", "-c", "touch /x; touch /w/ok && echo ok")  # fmt: skip
    assert code == 0 and "Read-only" in out and "ok" in out.splitlines()
    assert (shared / "ok").exists()


def test_errors_name_the_problem_and_exit_125(images: Any, tmp_path: Path) -> None:
    cases = [
        (["nginx"], "no such image nginx: load it with 'cove image load' or pull it"),
        (["-v", "rel/dir:/x", "bb"], "is neither an absolute host path nor a volume name"),
        (
            ["--mount", f"type=bind,source={tmp_path}/missing,target=/x", "bb"],
            "bind source path does not exist",
        ),
        (["--mount", "type=volume,source=a:b,target=/x", "bb"], "type=volume takes source=NAME"),
        (["--mount", "type=nfs,target=/x", "bb"], "type must be bind, volume or tmpfs"),
        (["--tmpfs", "relative", "bb"], "must be absolute"),
    ]
    before = images.ok("ps", "-aq")
    for args, message in cases:
        res = images.cli("run", "-d", *args)
        assert res.returncode == 125, (args, res.stderr)
        assert message in res.stderr, (args, res.stderr)
    assert images.ok("ps", "-aq") == before


def test_rmi_refuses_an_image_in_use(images: Any) -> None:
    images.ok("run", "-d", "--name", "user1", "app:1", "sleep 60")
    res = images.cli("rmi", "app:1")
    assert res.returncode != 0 and "used by container(s) user1" in res.stderr
    images.ok("rm", "-f", "user1")
    assert not any(
        os.scandir(images.state_dir / "images" / "containers")
    )  # its writable layer went with it
    out = images.ok("rmi", "app:1")
    assert "Untagged: app:1" in out and "Deleted: sha256:" in out
    assert "app" not in images.ok("images")
    # bb's layer stays, app's own layer is gone
    assert len(os.listdir(images.state_dir / "images" / "layers")) == 1
    res = images.cli("rmi", "app:1")
    assert res.returncode == 3 and "no such image app:1" in res.stderr


def test_load_shows_progress_on_a_terminal(images: Any, tmp_path: Path) -> None:
    main, tty = pty.openpty()
    with os.fdopen(main, "rb", buffering=0) as reader:
        proc = subprocess.run(
            [*COVE, "image", "load", "-i", str(tmp_path / "app.tar")],
            stdout=tty, stderr=subprocess.PIPE, env=images.env, timeout=60,
        )  # fmt: skip
        os.close(tty)
        out = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is closed
            while chunk := reader.read(4096):
                out += chunk
    assert proc.returncode == 0, proc.stderr
    text = out.decode()
    # the base layer is bb's too, so already there; every layer is named
    assert "layer 1/2" in text and "layer 2/2" in text and "already present" in text
    assert text.rstrip().endswith("Loaded image: app:1")
