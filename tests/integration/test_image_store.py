"""The image store on a real disk: both archive formats, layers shared,
whiteouts as overlayfs reads them, and bad archives (corrupt, truncated,
a digest that does not match, a full disk) leaving nothing stored."""

from __future__ import annotations

import gzip
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove.errors import InvalidArgument, NotFound, StorageFull
from cove.image.store import ImageStore
from imageutil import Img, Layer, busybox_layer, docker_archive, oci_archive, sha

pytestmark = pytest.mark.root


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return ImageStore(tmp_path / "images")


def _stored(store: ImageStore) -> tuple[list[str], list[str], list[str]]:
    def names(d: str) -> list[str]:
        p = store.root / d
        return sorted(os.listdir(p)) if p.exists() else []

    return names("images"), names("layers"), names("tmp")


def _two_layer_image() -> Img:
    base = busybox_layer()
    base.entries.update({"data": None, "data/old": b"old\n", "etc/gone": b"x\n", "keep": None,
                         "keep/a": b"a\n"})  # fmt: skip
    top = Layer({"etc/.wh.gone": b"", "data/.wh..wh..opq": b"", "data/new": b"new\n",
                 "keep/b": b"b\n"})  # fmt: skip
    return Img([base, top], entrypoint=["/bin/sh", "-c"], cmd=["echo hi"])


def test_both_formats_load_share_layers_and_keep_whiteouts(
    store: ImageStore, tmp_path: Path
) -> None:
    image = _two_layer_image()
    docker_id = docker_archive(tmp_path / "d.tar", image, "app:1")
    oci_id = oci_archive(tmp_path / "o.tar", image, "localhost/app:2", index=True)
    assert docker_id == oci_id  # same config: the same image

    [loaded] = store.load(tmp_path / "d.tar")
    assert loaded.id == docker_id and loaded.tags == ("app:1",)
    assert loaded.config.entrypoint == ("/bin/sh", "-c")
    [again] = store.load(tmp_path / "o.tar")
    assert again.id == docker_id
    assert sorted(store.get("app:1").tags) == ["app:1", "localhost/app:2"]
    assert store.get("localhost/app:2").id == store.get(docker_id[7:19]).id
    images, layers, tmp = _stored(store)
    assert len(images) == 1 and len(layers) == 2 and tmp == []

    # the top layer holds overlayfs whiteouts: a 0/0 device, an opaque dir
    top = Path(store.layer_dirs(loaded)[0])
    gone = os.lstat(top / "etc" / "gone")
    assert os.major(gone.st_rdev) == 0 and os.minor(gone.st_rdev) == 0
    assert os.getxattr(top / "data", "trusted.overlay.opaque") == b"y"
    assert not (top / "etc" / ".wh.gone").exists()

    with pytest.raises(NotFound, match="no such image nope: load it with 'cove image load'"):
        store.get("nope")


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_bad_archives_are_refused_and_store_nothing(store: ImageStore, tmp_path: Path) -> None:
    image = _two_layer_image()
    # truncated in the middle of the big layer
    docker_archive(tmp_path / "t.tar", image, "app:1")
    _truncate(tmp_path / "t.tar", 0.6)
    # a layer whose bytes do not match its digest
    oci_archive(tmp_path / "m.tar", image, "app:1")
    bad = tmp_path / "m2.tar"
    with tarfile.open(tmp_path / "m.tar") as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.startswith("blobs/") and data[:2] == b"\x1f\x8b" and len(data) < 1000:
                data = gzip.compress(gzip.decompress(data) + b"\0" * 512, mtime=0)
            m.size = len(data)
            dst.addfile(m, __import__("io").BytesIO(data))
    # not a tar at all, and a tar that is no image
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 100)
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    # a layer that writes outside its directory
    escape = Img([Layer({"../../outside": b"x"})])
    docker_archive(tmp_path / "e.tar", escape, "evil:1")

    cases = [
        ("t.tar", "corrupt or truncated"),
        ("m2.tar", "does not match"),
        ("junk.tar", "not a tar archive"),
        ("empty.tar", "neither manifest.json"),
        ("e.tar", "outside the image"),
    ]
    for name, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            store.load(tmp_path / name)
        assert _stored(store) == ([], [], []), name
    assert not (tmp_path / "outside").exists()
    with pytest.raises(NotFound, match="not found"):
        store.load(tmp_path / "missing.tar")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_stores_nothing(small_disk: Path, tmp_path: Path) -> None:
    store = ImageStore(small_disk / "images")
    # busybox (2 MB) fits; with a second layer of 3 MB it does not
    big = Layer({"big": os.urandom(3_000_000)})
    docker_archive(tmp_path / "big.tar", Img([busybox_layer(), big]), "big:1")
    with pytest.raises(StorageFull, match="no space left"):
        store.load(tmp_path / "big.tar")
    assert _stored(store) == ([], [], [])
    # and the disk is usable again: a smaller image loads
    docker_archive(tmp_path / "ok.tar", Img([busybox_layer()]), "ok:1")
    [ok] = store.load(tmp_path / "ok.tar")
    assert store.get("ok:1").id == ok.id == sha(Img([busybox_layer()]).config(
        [sha(busybox_layer().tar())]))  # fmt: skip


def test_links_in_a_layer_cannot_reach_the_host(store: ImageStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("host\n")
    os.chmod(victim, 0o700)
    through = Layer({"d": ("link", str(victim)), "d/new": b"x"})
    docker_archive(tmp_path / "through.tar", Img([through]), "through:1")
    with pytest.raises(InvalidArgument, match="outside the image"):
        store.load(tmp_path / "through.tar")
    # a layer naming the same path twice: a link to the host, then a file
    import io

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        link = tarfile.TarInfo("x")
        link.type, link.linkname = tarfile.SYMTYPE, str(victim / "file")
        t.addfile(link)
        f = tarfile.TarInfo("x")
        f.size, f.mode = 4, 0o777
        t.addfile(f, io.BytesIO(b"evil"))
        d = tarfile.TarInfo("dd")
        d.type, d.linkname = tarfile.SYMTYPE, str(victim)
        t.addfile(d)
        d2 = tarfile.TarInfo("dd")
        d2.type, d2.mode = tarfile.DIRTYPE, 0o777
        t.addfile(d2)
        h = tarfile.TarInfo("hard")
        h.type, h.linkname = tarfile.LNKTYPE, "x2"
        t.addfile(h)
    layer_tar = raw.getvalue()
    twice = Layer()
    twice.tar = lambda: layer_tar  # type: ignore[method-assign]
    docker_archive(tmp_path / "twice.tar", Img([twice]), "twice:1")
    with pytest.raises(InvalidArgument, match="corrupt"):  # the hard link's target is missing
        store.load(tmp_path / "twice.tar")
    assert (victim / "file").read_text() == "host\n"
    assert os.stat(victim).st_mode & 0o777 == 0o700
    assert sorted(os.listdir(victim)) == ["file"]


def test_a_hard_link_to_a_host_file_is_refused(store: ImageStore, tmp_path: Path) -> None:
    import io

    secret = tmp_path / "secret"
    secret.write_text("host\n")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        s = tarfile.TarInfo("s")
        s.type, s.linkname = tarfile.SYMTYPE, str(secret)
        t.addfile(s)
        h = tarfile.TarInfo("h")
        h.type, h.linkname = tarfile.LNKTYPE, "s"
        t.addfile(h)
    data = raw.getvalue()
    layer = Layer()
    layer.tar = lambda: data  # type: ignore[method-assign]
    docker_archive(tmp_path / "hard.tar", Img([layer]), "hard:1")
    with pytest.raises(InvalidArgument, match="outside the image"):
        store.load(tmp_path / "hard.tar")
    assert os.stat(secret).st_nlink == 1
    assert _stored(store) == ([], [], [])
