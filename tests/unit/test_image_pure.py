"""The pure parts of images and mounts: references, archive JSON, what
``run IMAGE`` runs, and -v/--mount/--tmpfs as Docker reads them."""

from __future__ import annotations

import json

import pytest

from cove.errors import InvalidArgument
from cove.image import archive, reference, runconfig
from cove.image.archive import ImageConfig
from cove.runtime.mounts import Kind, Mount, parse_all, parse_mount, parse_tmpfs, parse_volume

DIFF = "sha256:" + "a" * 64


def test_references_and_the_names_they_may_mean() -> None:
    r = reference.parse("nginx")
    assert (r.registry, r.path, r.tag) == ("", "nginx", "latest")
    assert r.candidates() == (
        "nginx:latest", "docker.io/library/nginx:latest", "docker.io/nginx:latest",
        "localhost/nginx:latest",
    )  # fmt: skip
    assert r.remote() == "docker.io/library/nginx:latest"
    r = reference.parse("127.0.0.1:5000/team/app:1.2")
    assert (r.registry, r.path, r.tag) == ("127.0.0.1:5000", "team/app", "1.2")
    assert r.candidates() == ("127.0.0.1:5000/team/app:1.2",)
    assert reference.parse(f"app@sha256:{'b' * 64}").remote().endswith("@sha256:" + "b" * 64)
    for bad in ("", "UPPER", "a b", "app:", "app@sha256:12", "../x", "x:" + "t" * 200):
        with pytest.raises(InvalidArgument):
            reference.parse(bad)


def test_config_and_manifest_parsing() -> None:
    conf = json.dumps({
        "config": {"Entrypoint": ["/e"], "Cmd": ["c"], "Env": ["A=1"], "WorkingDir": "/w",
                   "User": "app"},
        "rootfs": {"diff_ids": [DIFF]},
    }).encode()  # fmt: skip
    c = archive.parse_config(conf)
    assert (c.entrypoint, c.cmd, c.env, c.workdir, c.user) == (("/e",), ("c",), ("A=1",), "/w",
                                                                "app")  # fmt: skip
    for bad in (b"nope", b"[]", b'{"rootfs": {}}', b'{"config": {"Cmd": [1]}, "rootfs": '
                b'{"diff_ids": []}}', b'{"rootfs": {"diff_ids": ["md5:x"]}}'):  # fmt: skip
        with pytest.raises(InvalidArgument, match="not a valid image archive"):
            archive.parse_config(bad)

    # VOLUME: the paths, normalized; a path that is not absolute refused
    def volumes(value: object) -> bytes:
        return json.dumps({"config": {"Volumes": value}, "rootfs": {"diff_ids": []}}).encode()

    assert archive.parse_config(volumes({"/data/": {}, "/a/../b": {}})).volumes == ("/data", "/b")
    assert archive.parse_config(volumes(None)).volumes == ()
    for bad_volumes in ({"rel": {}}, {"/": {}}, ["/x"]):
        with pytest.raises(InvalidArgument, match="Volumes"):
            archive.parse_config(volumes(bad_volumes))
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["l.tar"]}])
    [img] = archive.docker_archive(manifest.encode(), lambda _p: c)
    assert img.tags == ("a:1",) and img.layers[0].diff_id == DIFF and img.config_digest == ""
    two = json.dumps([{"Config": "c.json", "Layers": ["l.tar", "m.tar"]}]).encode()
    with pytest.raises(InvalidArgument, match="different number of layers"):
        archive.docker_archive(two, lambda _p: c)


def test_run_config_follows_docker() -> None:
    c = ImageConfig(entrypoint=("/bin/sh", "-c"), cmd=("echo hi",), env=("A=1", "B=2"),
                    workdir="/srv")  # fmt: skip
    got = runconfig.apply("img", c, [], {"B": "3"}, "")
    assert got.argv == ("/bin/sh", "-c", "echo hi") and got.env == {"A": "1", "B": "3"}
    assert got.workdir == "/srv"
    assert runconfig.apply("img", c, ["ls"], {}, "/tmp").argv == ("/bin/sh", "-c", "ls")
    assert runconfig.apply("img", ImageConfig(cmd=("x",)), [], {}, "").workdir == "/"
    with pytest.raises(InvalidArgument, match="has no command"):
        runconfig.apply("img", ImageConfig(), [], {}, "")
    passwd = b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
    group = b"root:x:0:\nstaff:x:50:\n"
    assert runconfig.resolve_user("app", passwd, group) == (1000, 1001)
    assert runconfig.resolve_user("app:staff", passwd, group) == (1000, 50)
    assert runconfig.resolve_user("1000", passwd, group) == (1000, 1001)
    assert runconfig.resolve_user("42:7", None, None) == (42, 7)
    with pytest.raises(InvalidArgument, match="not in its /etc/passwd"):
        runconfig.resolve_user("nobody", passwd, group)


def test_mount_flags_as_docker_reads_them() -> None:
    assert parse_volume("/h:/c:ro") == Mount(Kind.BIND, "/c", "/h", True)
    assert parse_volume("my_vol.1:/c") == Mount(Kind.VOLUME, "/c", "my_vol.1", False)
    assert parse_mount("type=volume,src=v,dst=/c,ro") == Mount(Kind.VOLUME, "/c", "v", True)
    assert parse_volume("/h/../h2:/c/") == Mount(Kind.BIND, "/c", "/h2", False)
    # no source: an anonymous volume, its name given at run
    assert parse_volume("/data/") == Mount(Kind.VOLUME, "/data", anonymous=True)
    assert parse_mount("type=volume,dst=/d") == Mount(Kind.VOLUME, "/d", anonymous=True)
    assert parse_mount("type=bind,src=/h,dst=/c,readonly") == Mount(Kind.BIND, "/c", "/h", True)
    assert parse_mount("type=tmpfs,target=/t,tmpfs-size=64m").options == "size=64m"
    assert parse_tmpfs("/t:size=1m,mode=1777") == Mount(
        Kind.TMPFS, "/t", options="size=1m,mode=1777"
    )
    for bad, why in [
        ("./rel:/c", "neither an absolute"), ("a/b:/c", "give the full path"),
        ("/h:rel", "must be absolute"), ("/h:/c:rx", "expected"), ("-x:/c", "volume name"),
        ("/h:/", "cannot mount over"),
    ]:  # fmt: skip
        with pytest.raises(InvalidArgument, match=why):
            parse_volume(bad)
    for bad, why in [
        ("type=volume,src=a/b,target=/x", "takes source=NAME"),
        ("type=nfs,target=/x", "bind, volume"),
        ("type=bind,target=/x", "absolute host"),
        ("type=bind,source=/h", "target= is required"), ("type=bind,source=/h,target=/x,z=1",
        "unknown z"),
    ]:  # fmt: skip
        with pytest.raises(InvalidArgument, match=why):
            parse_mount(bad)
    with pytest.raises(InvalidArgument, match="tmpfs option"):
        parse_tmpfs("/t:exec")
    with pytest.raises(InvalidArgument, match="duplicate mount point /c") as err:
        parse_all(["/a:/c"], [], ["/c"])
    assert err.value.details == {"mount": "/c"}
