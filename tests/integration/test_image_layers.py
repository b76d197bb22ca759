"""Layers as podman and Docker write them beyond plain and gzip tars:
zstd-compressed ones (``tar+zstd``, which podman can push), checked
against their digests as gzip ones are, and a bad one leaving nothing
stored; extended attributes (a file capability as ping has, user.*)
kept on the unpacked files, and what a layer must not set left out."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

from cove.errors import InvalidArgument
from cove.image.store import ImageStore
from imageutil import Img, Layer, busybox_layer, oci_archive

pytestmark = pytest.mark.root

_ZSTD = b"\x28\xb5\x2f\xfd"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return ImageStore(tmp_path / "images")


def _stored(store: ImageStore) -> list[str]:
    return sorted(
        f"{d}/{n}" for d in ("images", "layers", "tmp") if (store.root / d).exists()
        for n in os.listdir(store.root / d)
    )  # fmt: skip


def _rewrite_zstd_blobs(src: Path, dst: Path, change: Callable[[bytes], bytes]) -> None:
    """``src`` with each zstd blob replaced by ``change(blob)``, under its old name."""
    with tarfile.open(src) as old, tarfile.open(dst, "w") as new:
        for m in old.getmembers():
            f = old.extractfile(m)
            data = f.read() if f is not None else b""
            if data.startswith(_ZSTD):
                data = change(data)
            m.size = len(data)
            new.addfile(m, io.BytesIO(data))


@pytest.mark.usefixtures("runtime_cleanup")
def test_an_image_of_zstd_layers_loads_and_runs(agent: Any, tmp_path: Path) -> None:
    need_containers(agent)
    top = Layer({"srv": None, "srv/msg": b"from a zstd layer\n"})
    image = Img([busybox_layer(), top], cmd=["cat", "/srv/msg"])
    oci_archive(tmp_path / "z.tar", image, "zst:1", zstd=True)
    assert agent.ok("image", "load", "-i", str(tmp_path / "z.tar")) == "Loaded image: zst:1\n"
    name = agent.ok("run", "-d", "zst:1").strip()
    eventually(lambda: inspect(agent, name)["state"]["status"] == "exited")
    assert inspect(agent, name)["state"]["exit_code"] == 0
    assert agent.output(name) == "from a zstd layer\n"


def test_bad_zstd_layers_are_refused_and_store_nothing(store: ImageStore, tmp_path: Path) -> None:
    image = Img([busybox_layer(), Layer({"srv": None, "srv/f": os.urandom(100_000)})])
    oci_archive(tmp_path / "z.tar", image, "zst:1", zstd=True)

    def longer(blob: bytes) -> bytes:  # valid zstd, but not the bytes the digest names
        plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
        return zstandard.ZstdCompressor().compress(plain + b"\0" * 512)

    cases: list[tuple[Callable[[bytes], bytes], str]] = [
        (lambda b: b[: len(b) // 2], "corrupt or truncated"),
        (lambda b: b[:4] + b"\xff" * (len(b) - 4), "corrupt or truncated"),
        (longer, "does not match"),
    ]
    for change, message in cases:
        bad = tmp_path / "bad.tar"
        _rewrite_zstd_blobs(tmp_path / "z.tar", bad, change)
        with pytest.raises(InvalidArgument, match=message):
            store.load(bad)
        assert _stored(store) == [], message
    [loaded] = store.load(tmp_path / "z.tar")  # the good one still loads
    assert loaded.tags == ("zst:1",) and len(store.layer_dirs(loaded)) == 2


# cap_net_raw in the permitted set, effective: what `setcap cap_net_raw+ep` writes
# (struct vfs_cap_data, revision 2)
_CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def _xattr_image() -> Img:
    top = Layer(
        {"srv": None, "srv/note": b"n\n", "srv/ping2": b"#!/bin/sh\n", "srv/dir": None},
        xattrs={
            "srv/note": {"user.origin": b"layer \xff\x00 bytes"},
            "srv/ping2": {"security.capability": _CAP_NET_RAW},
            # overlayfs's own attributes: a layer must not forge them
            "srv/dir": {"trusted.overlay.redirect": b"/etc", "user.ok": b"1"},
        },
    )
    return Img([busybox_layer(), top], cmd=["sleep", "600"])


def _user_xattrs_supported(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f"probe-{uuid.uuid4().hex[:8]}"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def _check_xattrs(root: Path) -> None:
    assert os.getxattr(root / "srv/note", "user.origin") == b"layer \xff\x00 bytes"
    assert os.getxattr(root / "srv/ping2", "security.capability") == _CAP_NET_RAW
    assert os.getxattr(root / "srv/dir", "user.ok") == b"1"
    assert "trusted.overlay.redirect" not in os.listxattr(root / "srv/dir")
    assert stat_mode(root / "srv/ping2") == 0o755  # the chown did not drop it after


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_layer_xattrs_are_kept_in_the_store(store: ImageStore, tmp_path: Path) -> None:
    if not _user_xattrs_supported(store.root):
        pytest.skip("the filesystem under the image store has no user.* attributes")
    oci_archive(tmp_path / "x.tar", _xattr_image(), "xattr:1")
    # a capability the kernel refuses: a clear error, nothing stored
    bad = Layer({"f": b""}, xattrs={"f": {"security.capability": b"junk"}})
    oci_archive(tmp_path / "bad.tar", Img([busybox_layer(), bad]), "bad:1")
    with pytest.raises(InvalidArgument, match="'f' has extended attribute security.capability"):
        store.load(tmp_path / "bad.tar")
    assert _stored(store) == []
    [image] = store.load(tmp_path / "x.tar")
    _check_xattrs(Path(store.layer_dirs(image)[0]))


@pytest.mark.usefixtures("runtime_cleanup")
def test_a_container_sees_its_layers_xattrs(agent: Any, tmp_path: Path) -> None:
    need_containers(agent)
    if not _user_xattrs_supported(Path(agent.state_dir)):
        pytest.skip("the filesystem under the agent's state has no user.* attributes")
    oci_archive(tmp_path / "x.tar", _xattr_image(), "xattr:1", zstd=True)
    agent.ok("image", "load", "-i", str(tmp_path / "x.tar"))
    name = agent.ok("run", "-d", "xattr:1").strip()
    eventually(lambda: inspect(agent, name)["state"]["status"] == "running")
    pid = inspect(agent, name)["state"]["pid"]
    # the container's own root, through its overlay, as its processes see it
    _check_xattrs(Path(f"/proc/{pid}/root"))
