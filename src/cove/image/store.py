"""The local image store, under the agent's state directory::

    layers/<hex of diff_id>/   one unpacked layer, shared by every image
    images/<hex of id>.json    an image: its config, layers and tags
    containers/<id>/           a container's overlay upper and work dirs
    tmp/                       unpacking in progress (emptied on open)

Everything appears by ``rename`` once complete and checked, under an
exclusive lock, so a corrupt or truncated archive, a digest mismatch or a
full disk leaves nothing half-stored: the layers a failed load unpacked
are removed with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from cove.errors import InUse, InvalidArgument, NotFound, storage_error
from cove.image import archive, reference, unpack
from cove.image.archive import ArchiveImage, ImageConfig

NO_SUCH_IMAGE = "no such image {ref}: load it with 'cove image load' or pull it"


@dataclass(frozen=True, slots=True)
class Image:
    id: str  # sha256:<hex of the config>
    config: ImageConfig
    tags: tuple[str, ...]
    size: int
    loaded: float

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "id": self.id,
            "tags": list(self.tags),
            "size": self.size,
            "loaded": self.loaded,
            "created": c.created,
            "os": c.os,
            "architecture": c.architecture,
            "config": c.to_json(),
            "layers": list(c.diff_ids),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Image:
        conf = data["config"]
        return cls(
            id=data["id"],
            config=ImageConfig(
                entrypoint=tuple(conf.get("Entrypoint") or ()),
                cmd=tuple(conf.get("Cmd") or ()),
                env=tuple(conf.get("Env") or ()),
                workdir=conf.get("WorkingDir") or "",
                user=conf.get("User") or "",
                diff_ids=tuple(data["layers"]),
                os=data.get("os", "linux"),
                architecture=data.get("architecture", "amd64"),
                created=data.get("created", ""),
                volumes=tuple(conf.get("Volumes") or ()),
            ),
            tags=tuple(data.get("tags") or ()),
            size=int(data.get("size", 0)),
            loaded=float(data.get("loaded", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """What a load is doing, for a terminal: layer ``index`` of ``total``
    and the bytes read of it so far."""

    index: int
    total: int
    diff_id: str
    done: int
    size: int
    cached: bool = False


ProgressFn = Callable[[Progress], None]


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._layers = root / "layers"
        self._images = root / "images"
        self._containers = root / "containers"
        self._tmp = root / "tmp"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            for d in (self._layers, self._images, self._containers, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise storage_error(exc, str(self.root), "cannot open the image store") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for stale in self._tmp.iterdir():  # a load that crashed
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------

    def images(self) -> list[Image]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self._images.glob("*.json")):
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                    out.append(Image.from_json(json.loads(path.read_text())))
        return sorted(out, key=lambda i: -i.loaded)

    def get(self, ref: str) -> Image:
        """By name (``nginx`` means ``nginx:latest``), full ID or unique ID
        prefix. Raises ``NotFound`` with the way out, ``InvalidArgument``
        for an ambiguous prefix."""
        images = self.images()
        hexref = ref.removeprefix("sha256:")
        if len(hexref) >= 4 and all(ch in "0123456789abcdef" for ch in hexref):
            hits = [i for i in images if i.id.removeprefix("sha256:").startswith(hexref)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                ids = ", ".join(i.id[7:19] for i in hits)
                raise InvalidArgument(f"image ID prefix {ref} is ambiguous: {ids}", image=ref)
        try:
            names = reference.parse(ref).candidates()
        except InvalidArgument:
            raise NotFound(NO_SUCH_IMAGE.format(ref=ref), image=ref) from None
        for name in names:
            for img in images:
                if name in img.tags:
                    return img
        raise NotFound(NO_SUCH_IMAGE.format(ref=ref), image=ref)

    def layer_dirs(self, image: Image) -> tuple[str, ...]:
        """Lower directories for overlayfs, top layer first."""
        return tuple(str(self._layers / d[7:]) for d in reversed(image.config.diff_ids))

    def find_file(self, image: Image, path: str) -> bytes | None:
        """A small file of the image (``etc/passwd``), from its top layer
        down; None when absent."""
        for layer in self.layer_dirs(image):
            full = os.path.join(layer, path)
            if os.path.lexists(full):
                with contextlib.suppress(OSError):
                    if os.path.isfile(full) and not os.path.islink(full):
                        return Path(full).read_bytes()[: 1 << 20]
                return None
        return None

    # -- containers' writable layers ---------------------------------------------

    def container_dir(self, cid: str) -> Path:
        """Upper, work and mount point of a container's overlay (made here)."""
        base = self._containers / cid
        try:
            for sub in ("upper", "work", "root"):
                (base / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, str(base), "cannot make the container's root") from exc
        return base

    def remove_container_dir(self, cid: str) -> None:
        shutil.rmtree(self._containers / cid, ignore_errors=True)

    # -- load --------------------------------------------------------------------

    def load(self, path: Path, progress: ProgressFn | None = None) -> list[Image]:
        """Loads every image of a docker-archive or OCI layout tar.
        Raises ``InvalidArgument`` (corrupt, truncated, digest mismatch),
        ``NotFound`` (no such file), ``StorageFull`` (disk full)."""
        try:
            tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound(f"archive {path} not found", path=str(path)) from None
        except IsADirectoryError:
            raise InvalidArgument(f"{path} is a directory: give an image archive (.tar)") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InvalidArgument(f"{path} is not a tar archive: {exc}") from None
        with tar, self._locked():
            return self._load(tar, progress)

    def _load(self, tar: tarfile.TarFile, progress: ProgressFn | None) -> list[Image]:
        try:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InvalidArgument(f"the archive is corrupt or truncated: {exc}") from exc

        def member(name: str) -> IO[bytes]:
            m = members.get(name.removeprefix("./"))
            f = tar.extractfile(m) if m is not None else None
            if f is None:
                raise archive.bad(f"{name} is missing")
            return f

        def small(name: str) -> bytes:
            try:
                return member(name).read(1 << 24)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise archive.bad(f"{name} cannot be read: {exc}") from exc

        configs: dict[str, bytes] = {}

        def config_of(name: str) -> ImageConfig:
            configs[name] = small(name)
            return archive.parse_config(configs[name])

        if "manifest.json" in members:
            found = archive.docker_archive(small("manifest.json"), config_of)
        elif "index.json" in members:
            found = archive.oci_layout(
                small("index.json"),
                lambda d: archive.parse_json(small(archive.blob_path(d)), d),
                config_of,
            )
        else:
            raise archive.bad("neither manifest.json (docker-archive) nor index.json (OCI)")
        made: list[Path] = []
        try:
            out = [self._store(img, configs[img.config_path], member, made, progress)
                   for img in found]  # fmt: skip
            for image in out:
                self._write_image(image)
        except BaseException as exc:
            for d in made:
                shutil.rmtree(d, ignore_errors=True)
            if isinstance(exc, OSError):
                raise storage_error(exc, str(self.root), "cannot store the image") from exc
            raise
        return out

    def _store(
        self,
        img: ArchiveImage,
        config_bytes: bytes,
        member: Callable[[str], IO[bytes]],
        made: list[Path],
        progress: ProgressFn | None,
    ) -> Image:
        digest = unpack.HashingReader(_bytes_io(config_bytes))
        digest.drain()
        if img.config_digest and digest.digest != img.config_digest:
            raise InvalidArgument(f"the image config does not match its digest {img.config_digest}")
        config = archive.parse_config(config_bytes)
        size = 0
        for i, blob in enumerate(img.layers):
            final = self._layers / blob.diff_id[7:]
            if final.exists():
                size += _tree_size(final)
                if progress:
                    progress(Progress(i + 1, len(img.layers), blob.diff_id, 0, 0, cached=True))
                continue
            size += self._unpack(blob, member, final, made, i, len(img.layers), progress)
        for tag in img.tags:
            reference.parse(tag)  # a hostile name must not reach the store
        return Image(digest.digest, config, img.tags, size, time.time())

    def _unpack(
        self,
        blob: archive.LayerBlob,
        member: Callable[[str], IO[bytes]],
        final: Path,
        made: list[Path],
        index: int,
        total: int,
        progress: ProgressFn | None,
    ) -> int:
        tmp = Path(tempfile.mkdtemp(prefix="layer-", dir=self._tmp))
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(Progress(index + 1, total, blob.diff_id, done, 0))

        try:
            os.chmod(tmp, 0o755)
            size = unpack.unpack_layer(
                member(blob.path), str(tmp), digest=blob.digest, diff_id=blob.diff_id,
                progress=step,
            )  # fmt: skip
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        made.append(final)
        return size

    def _write_image(self, image: Image) -> None:
        """Its tags move to it from any other image (as ``docker load``)."""
        for other in self.images():
            if other.id != image.id and set(other.tags) & set(image.tags):
                kept = tuple(t for t in other.tags if t not in image.tags)
                self._put(replace(other, tags=kept))
        current = next((i for i in self.images() if i.id == image.id), None)
        if current is not None:
            image = replace(image, tags=tuple(dict.fromkeys(current.tags + image.tags)))
        self._put(image)

    def _put(self, image: Image) -> None:
        path = self._images / f"{image.id[7:]}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(image.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)

    # -- remove ------------------------------------------------------------------

    def remove(self, ref: str, in_use: Callable[[Image], list[str]], force: bool) -> list[str]:
        """``rmi``: untags ``ref``; deletes the image once it has no tag
        left (or ``ref`` is its ID), and the layers no image needs. Raises
        ``InUse`` while containers (``in_use``) use it, unless ``force``,
        which then only untags it. Returns what was done, one line each."""
        with self._locked():
            image = self.get(ref)
            users = in_use(image)
            by_id = image.id.removeprefix("sha256:").startswith(ref.removeprefix("sha256:"))
            tag = "" if by_id else next(
                (n for n in reference.parse(ref).candidates() if n in image.tags), ""
            )  # fmt: skip
            if users and not force:
                raise InUse(
                    f"image {ref} is used by container(s) {', '.join(users)}: remove them first"
                    " or use rmi -f",
                    image=ref,
                )
            done: list[str] = []
            untag = (tag,) if tag else image.tags
            if (tag and len(image.tags) > 1) or users:
                self._put(replace(image, tags=tuple(t for t in image.tags if t not in untag)))
                return [f"Untagged: {t}" for t in untag]
            done += [f"Untagged: {t}" for t in image.tags]
            (self._images / f"{image.id[7:]}.json").unlink()
            done.append(f"Deleted: {image.id}")
            self._collect()
            return done

    def _collect(self) -> None:
        needed = {d[7:] for i in self.images() for d in i.config.diff_ids}
        for layer in self._layers.iterdir():
            if layer.name not in needed:
                trash = self._tmp / f"gone-{layer.name}"
                os.rename(layer, trash)  # gone at once, deleted at leisure
                shutil.rmtree(trash, ignore_errors=True)


def _bytes_io(data: bytes) -> IO[bytes]:
    return io.BytesIO(data)


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total
