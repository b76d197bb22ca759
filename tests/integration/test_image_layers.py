"""Layers as podman and Docker write them beyond plain and gzip tars:
zstd-compressed ones (``tar+zstd``, which podman can push), checked
against their digests as gzip ones are, and a bad one leaving nothing
stored."""

from __future__ import annotations

import io
import os
import tarfile
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
