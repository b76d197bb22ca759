"""Volumes as Docker has them: `-v /host/dir:/path` makes a missing host
directory; `-v NAME:/path` makes a named volume on first use, filled from
the image when new, kept after its container is removed; `-v /path` and
an image's VOLUME make anonymous ones, removed by `rm -v` and `run --rm`;
`cove volume create|ls|inspect|rm|prune`, with rm refused while a
container uses it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

from imageutil import Img, Layer, busybox_layer, docker_archive

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


@pytest.fixture
def vols(agent: Any, tmp_path: Path) -> Any:
    need_containers(agent)
    base = busybox_layer()
    site = Layer({"srv": None, "srv/www": None, "srv/www/index": b"from image\n",
                  "srv/www/sub": None, "srv/www/sub/deep": b"deep\n",
                  "srv/www/link": ("link", "index")})  # fmt: skip
    docker_archive(tmp_path / "site.tar", Img([base, site], cmd=["sh"]), "site:1")
    agent.ok("image", "load", "-i", str(tmp_path / "site.tar"))
    return agent


def _run(agent: Any, *args: str) -> tuple[int, str]:
    name = agent.ok("run", "-d", *args).strip()
    eventually(lambda: inspect(agent, name)["state"]["status"] == "exited")
    return inspect(agent, name)["state"]["exit_code"], agent.output(name)


def _volumes(agent: Any) -> list[str]:
    return agent.ok("volume", "ls", "-q").split()


def test_a_missing_host_directory_is_made(vols: Any, tmp_path: Path) -> None:
    missing = tmp_path / "made" / "by" / "run"
    code, out = _run(vols, "-v", f"{missing}:/data", "site:1", "sh", "-c",
                     "echo hi > /data/f && cat /data/f")  # fmt: skip
    assert (code, out) == (0, "hi\n")
    assert (missing / "f").read_text() == "hi\n"
    assert stat.S_IMODE(os.stat(missing).st_mode) == 0o755
    # --mount keeps Docker's refusal; a run that fails takes its directory away
    res = vols.cli("run", "-d", "--mount", f"type=bind,source={tmp_path}/nope,target=/x", "site:1")
    assert res.returncode == 125 and "bind source path does not exist" in res.stderr
    gone = tmp_path / "gone" / "dir"
    res = vols.cli("run", "-d", "-v", f"{gone}:/no-such-mount-point-on-the-host", "--", "true")
    assert res.returncode != 0 and "does not exist" in res.stderr
    assert not (tmp_path / "gone").exists()
    afile = tmp_path / "a-file"
    afile.write_text("")
    res = vols.cli("run", "-d", "-v", f"{afile}/sub:/x", "site:1")
    assert res.returncode == 125 and "cannot make the -v host directory" in res.stderr
    assert "Not a directory" in res.stderr


def test_a_named_volume_outlives_its_container(vols: Any) -> None:
    assert _volumes(vols) == []
    code, out = _run(vols, "--name", "w1", "-v", "data:/data", "site:1", "sh", "-c",
                     "echo kept > /data/f; ls -A /data")  # fmt: skip
    assert (code, out) == (0, "f\n")
    assert _volumes(vols) == ["data"]
    (info,) = json.loads(vols.ok("volume", "inspect", "data"))
    assert info["name"] == "data" and info["driver"] == "local"
    assert info["containers"] == ["w1"] and info["created_at"].endswith("Z")
    assert Path(info["mountpoint"], "f").read_text() == "kept\n"
    mountpoint = vols.ok("volume", "inspect", "-f", "{{.Mountpoint}}", "data").strip()
    assert mountpoint == info["mountpoint"]
    mounts = inspect(vols, "w1")["mounts"]
    assert mounts == [{"type": "volume", "source": "data", "target": "/data",
                       "readonly": False, "options": ""}]  # fmt: skip
    # in use (by an exited container too): refused, naming the container
    res = vols.cli("volume", "rm", "data")
    assert res.returncode != 0 and "in use by container w1" in res.stderr
    assert _volumes(vols) == ["data"]
    vols.ok("rm", "w1")
    # a new container, a light one this time, finds the data
    assert _run(vols, "-v", "data:/tmp/d:ro", "--", "cat", "/tmp/d/f") == (0, "kept\n")
    code, out = _run(vols, "-v", "data:/tmp/d:ro", "--", "sh", "-c", "touch /tmp/d/x")
    assert code != 0 and "Read-only" in out
    for name in vols.ok("ps", "-aq").split():
        vols.ok("rm", name)
    assert vols.ok("volume", "rm", "data").strip() == "data"
    assert _volumes(vols) == [] and not Path(info["mountpoint"]).exists()


def test_a_new_volume_gets_the_images_files(vols: Any) -> None:
    code, out = _run(vols, "-v", "site:/srv/www", "site:1", "sh", "-c",
                     "cat /srv/www/index /srv/www/sub/deep; readlink /srv/www/link;"
                     " echo mine > /srv/www/index")  # fmt: skip
    assert (code, out) == (0, "from image\ndeep\nindex\n")
    # not copied again over what the volume holds
    assert _run(vols, "-v", "site:/srv/www", "site:1", "cat", "/srv/www/index") == (0, "mine\n")
    mountpoint = Path(json.loads(vols.ok("volume", "inspect", "site"))[0]["mountpoint"])
    assert stat.S_IMODE(os.stat(mountpoint / "sub").st_mode) == 0o755
    assert (mountpoint / "link").is_symlink()


def test_volume_commands_and_bad_input(vols: Any) -> None:
    assert vols.ok("volume", "create", "made").strip() == "made"
    assert vols.ok("volume", "create", "made").strip() == "made"  # as Docker: no error
    anon = vols.ok("volume", "create", "--label", "k=v").strip()
    assert len(anon) == 64
    assert json.loads(vols.ok("volume", "inspect", anon))[0]["labels"] == {"k": "v"}
    assert sorted(_volumes(vols)) == sorted(["made", anon])
    assert "local" in vols.ok("volume", "ls") and "VOLUME NAME" in vols.ok("volume", "ls")
    before = vols.ok("ps", "-aq")
    for args, message in [
        (["-v", "bad name:/x"], "neither an absolute host path nor a volume name"),
        (["-v", "./rel:/x"], "give the full path"),
        (["--mount", "type=volume,source=a/b,target=/x"], "type=volume takes source=NAME"),
        (["-v", "/"], "cannot mount over the container's /"),
    ]:
        res = vols.cli("run", "-d", *args, "site:1")
        assert res.returncode == 125 and message in res.stderr, (args, res.stderr)
    assert vols.ok("ps", "-aq") == before and len(_volumes(vols)) == 2
    res = vols.cli("volume", "create", "bad/name")
    assert res.returncode != 0 and "invalid volume name" in res.stderr
    res = vols.cli("volume", "rm", "nosuch", "made")
    assert res.returncode != 0 and "no such volume nosuch" in res.stderr
    assert res.stdout == "made\n" and _volumes(vols) == [anon]  # the rest still removed
    assert vols.cli("volume", "rm", "-f", "nosuch").returncode == 0
    # prune asks first, and keeps what is in use
    vols.ok("run", "-d", "--name", "user", "-v", "busy:/tmp/b", "--", "sleep", "600")
    res = vols.cli("volume", "prune", input="")
    assert res.returncode != 0 and sorted(_volumes(vols)) == sorted(["busy", anon])
    # as Docker 23: only anonymous volumes, unless --all (a created one is named)
    assert vols.ok("volume", "prune", "-f") == ""
    assert vols.ok("volume", "prune", "-a", "-f").split() == ["Deleted", "Volumes:", anon]
    assert _volumes(vols) == ["busy"]


def _anon_image(agent: Any, tmp_path: Path) -> None:
    base = busybox_layer()
    site = Layer({"srv": None, "srv/www": None, "srv/www/index": b"from image\n",
                  "srv/www/sub": None, "srv/www/sub/deep": b"deep\n"})  # fmt: skip
    image = Img([base, site], cmd=["sh"], volumes=["/srv/www", "/cache/"])
    docker_archive(tmp_path / "anon.tar", image, "anon:1")
    agent.ok("image", "load", "-i", str(tmp_path / "anon.tar"))


def _anon_mounts(agent: Any, name: str) -> dict[str, str]:
    """target -> volume name, of the container's anonymous volumes"""
    mounts = inspect(agent, name)["mounts"]
    return {m["target"]: m["source"] for m in mounts if m.get("anonymous")}


def test_anonymous_volumes_from_v_and_the_images_volume(vols: Any, tmp_path: Path) -> None:
    _anon_image(vols, tmp_path)
    code, out = _run(vols, "--name", "a1", "-v", "/scratch", "anon:1", "sh", "-c",
                     "cat /srv/www/index; echo x > /scratch/f; echo y > /cache/g")  # fmt: skip
    assert (code, out) == (0, "from image\n")
    anon = _anon_mounts(vols, "a1")
    assert sorted(anon) == ["/cache", "/scratch", "/srv/www"]
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in anon.values())
    assert sorted(_volumes(vols)) == sorted(anon.values())
    (info,) = json.loads(vols.ok("volume", "inspect", anon["/scratch"]))
    assert info["labels"] == {"com.docker.volume.anonymous": ""}
    assert info["containers"] == ["a1"]
    assert Path(info["mountpoint"], "f").read_text() == "x\n"
    srv = json.loads(vols.ok("volume", "inspect", anon["/srv/www"]))[0]["mountpoint"]
    assert Path(srv, "sub", "deep").read_text() == "deep\n"  # the image's files, copied

    # a -v or --mount at the image's VOLUME path replaces its anonymous volume
    code, out = _run(vols, "--name", "a2", "-v", "web:/srv/www", "--mount",
                     "type=volume,target=/cache", "anon:1", "ls", "/srv/www")  # fmt: skip
    assert (code, out) == (0, "index\nsub\n")
    anon2 = _anon_mounts(vols, "a2")
    assert sorted(anon2) == ["/cache"]
    assert sorted(_volumes(vols)) == sorted([*anon.values(), anon2["/cache"], "web"])

    # rm keeps them; rm -v removes the anonymous ones only (not "web")
    vols.ok("rm", "a1")
    assert sorted(_volumes(vols)) == sorted([*anon.values(), anon2["/cache"], "web"])
    vols.ok("rm", "-v", "a2")
    assert sorted(_volumes(vols)) == sorted([*anon.values(), "web"])
    # prune removes what no container uses: a1's, left behind by a plain rm
    _run(vols, "--name", "a3", "-v", "web:/srv/www", "-v", "/keep", "anon:1", "true")
    a3 = _anon_mounts(vols, "a3")
    pruned = vols.ok("volume", "prune", "-f").split()[2:]
    assert sorted(pruned) == sorted(anon.values())
    assert sorted(_volumes(vols)) == sorted([a3["/keep"], a3["/cache"], "web"])


def test_run_rm_removes_its_anonymous_volumes(vols: Any, tmp_path: Path) -> None:
    _anon_image(vols, tmp_path)
    res = vols.cli("run", "--rm", "-v", "/x", "anon:1", "sh", "-c", "echo hi > /x/f; cat /x/f")
    assert (res.returncode, res.stdout) == (0, "hi\n")
    assert _volumes(vols) == [] and vols.ok("ps", "-aq") == ""
    # detached: the agent removes it, and its volumes, once it has exited
    vols.ok("run", "-d", "--rm", "--name", "gone", "-v", "named:/n", "anon:1", "true")
    eventually(lambda: vols.ok("ps", "-aq") == "")
    eventually(lambda: _volumes(vols) == ["named"])  # a named volume stays


def test_the_images_files_are_copied_once_not_at_each_start(vols: Any, tmp_path: Path) -> None:
    _anon_image(vols, tmp_path)
    code, out = _run(vols, "--name", "c1", "anon:1", "sh", "-c",
                     "ls -A /srv/www | wc -l; rm -rf /srv/www/*")  # fmt: skip
    assert (code, out.split()) == (0, ["2"])
    vols.ok("start", "c1")
    eventually(lambda: vols.output("c1").split() == ["2", "0"])
    eventually(lambda: inspect(vols, "c1")["state"]["status"] == "exited")
    assert vols.output("c1").split() == ["2", "0"]  # emptied by the user: stays empty
