"""What an image archive holds, read from its JSON (pure): the OCI image
layout (``index.json``, ``blobs/sha256/``) that ``podman save --format
oci-archive`` and ``skopeo copy oci:`` write, and the docker-archive
(``manifest.json``) that ``docker save`` and ``podman save`` write.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cove.errors import InvalidArgument

_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
REF_NAME = "org.opencontainers.image.ref.name"
PLATFORM = ("linux", "amd64")


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image's config that ``run`` applies."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    diff_ids: tuple[str, ...] = ()
    os: str = "linux"
    architecture: str = "amd64"
    created: str = ""
    volumes: tuple[str, ...] = ()  # VOLUME: each container gets an anonymous one

    def to_json(self) -> dict[str, Any]:
        return {
            "Entrypoint": list(self.entrypoint),
            "Cmd": list(self.cmd),
            "Env": list(self.env),
            "WorkingDir": self.workdir,
            "User": self.user,
            "Volumes": {v: {} for v in self.volumes},
        }


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """One layer as stored in the archive: ``path`` of its member,
    ``digest`` of its bytes when the format names it (``""`` otherwise),
    and ``diff_id``, the digest of the uncompressed tar."""

    path: str
    digest: str
    diff_id: str


@dataclass(frozen=True, slots=True)
class ArchiveImage:
    config_path: str
    config_digest: str  # "" when the archive does not name it
    layers: tuple[LayerBlob, ...]
    tags: tuple[str, ...] = field(default=())


def bad(why: str) -> InvalidArgument:
    return InvalidArgument(f"not a valid image archive: {why}")


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise bad(f"{what} is not JSON") from None


def check_digest(digest: Any, what: str) -> str:
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise bad(f"{what} has no sha256 digest")
    return digest


def blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def parse_config(data: bytes) -> ImageConfig:
    doc = parse_json(data, "the image config")
    if not isinstance(doc, dict):
        raise bad("the image config is not an object")
    conf = doc.get("config") or {}
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(conf, dict) or not isinstance(diff_ids, list):
        raise bad("the image config has no rootfs.diff_ids")
    return ImageConfig(
        entrypoint=_strings(conf.get("Entrypoint")),
        cmd=_strings(conf.get("Cmd")),
        env=_strings(conf.get("Env")),
        workdir=str(conf.get("WorkingDir") or ""),
        user=str(conf.get("User") or ""),
        diff_ids=tuple(check_digest(d, "a layer diff_id") for d in diff_ids),
        os=str(doc.get("os") or "linux"),
        architecture=str(doc.get("architecture") or "amd64"),
        created=str(doc.get("created") or ""),
        volumes=_volumes(conf.get("Volumes")),
    )


def _volumes(value: Any) -> tuple[str, ...]:
    """The config's ``Volumes`` (an object whose keys are the paths):
    absolute paths, normalized, in order."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise bad("the image config's Volumes is not an object")
    out: list[str] = []
    for path in value:
        norm = posixpath.normpath(path) if isinstance(path, str) else ""
        if not norm.startswith("/") or norm == "/" or "\0" in norm:
            raise bad(f"the image config's Volumes names {path!r}, not an absolute path")
        if norm not in out:
            out.append(norm)
    return tuple(out)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad("the image config has a list that is not of strings")
    return tuple(value)


def docker_archive(manifest: bytes, config_of: Callable[[str], ImageConfig]) -> list[ArchiveImage]:
    """``manifest.json`` of a docker-archive; ``config_of`` reads a config
    member (its diff_ids name the layers, whose files are plain tars)."""
    doc = parse_json(manifest, "manifest.json")
    if not isinstance(doc, list) or not doc:
        raise bad("manifest.json lists no image")
    out = []
    for entry in doc:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise bad("a manifest.json entry has no Config")
        layers = entry.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(p, str) for p in layers):
            raise bad("a manifest.json entry has no Layers")
        config_path = entry["Config"]
        config = config_of(config_path)
        if len(config.diff_ids) != len(layers):
            raise bad("the config names a different number of layers than manifest.json")
        name = config_path.rsplit("/", 1)[-1].removesuffix(".json")
        digest = f"sha256:{name}" if re.fullmatch(r"[0-9a-f]{64}", name) else ""
        blobs = tuple(
            LayerBlob(path, _digest_in_path(path), diff)
            for path, diff in zip(layers, config.diff_ids, strict=True)
        )
        tags = entry.get("RepoTags") or []
        out.append(ArchiveImage(config_path, digest, blobs, tuple(str(t) for t in tags)))
    return out


def _digest_in_path(path: str) -> str:
    """newer ``docker save`` stores layers as ``blobs/sha256/<hex>``."""
    m = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", path)
    return f"sha256:{m.group(1)}" if m else ""


def oci_layout(
    index: bytes,
    read_json: Callable[[str], Any],
    config_of: Callable[[str], ImageConfig],
) -> list[ArchiveImage]:
    """``index.json`` of an OCI layout; ``read_json`` reads a blob by
    digest, ``config_of`` parses the config blob at a path."""
    doc = parse_json(index, "index.json")
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise bad("index.json lists no image")
    out = []
    for desc in manifests:
        if not isinstance(desc, dict):
            raise bad("index.json has an entry that is not an object")
        tag = _tag(desc.get("annotations") or {})
        manifest = _pick_platform(desc, read_json)
        config = manifest.get("config") or {}
        layers = manifest.get("layers")
        if not isinstance(config, dict) or not isinstance(layers, list):
            raise bad("an image manifest has no config or layers")
        config_digest = check_digest(config.get("digest"), "the image config")
        conf = config_of(blob_path(config_digest))
        if len(conf.diff_ids) != len(layers):
            raise bad("the config names a different number of layers than the manifest")
        blobs = []
        for layer, diff in zip(layers, conf.diff_ids, strict=True):
            digest = check_digest(layer.get("digest") if isinstance(layer, dict) else None,
                                  "a layer")  # fmt: skip
            blobs.append(LayerBlob(blob_path(digest), digest, diff))
        tags = (str(tag),) if tag else ()
        out.append(ArchiveImage(blob_path(config_digest), config_digest, tuple(blobs), tags))
    return out


def _pick_platform(desc: Mapping[str, Any], read_json: Callable[[str], Any]) -> dict[str, Any]:
    """The manifest a descriptor names; from a manifest list, linux/amd64's."""
    for _ in range(4):
        digest = check_digest(desc.get("digest"), "a manifest")
        doc = read_json(digest)
        if not isinstance(doc, dict):
            raise bad(f"manifest {digest} is not an object")
        kind = doc.get("mediaType") or desc.get("mediaType")
        if kind not in _INDEX_TYPES and "manifests" not in doc:
            return doc
        desc = _platform_entry(doc.get("manifests") or [])
    raise bad("manifest lists are nested too deep")


def _platform_entry(entries: Sequence[Any]) -> Mapping[str, Any]:
    for entry in entries:
        plat = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(plat, dict) and (plat.get("os"), plat.get("architecture")) == PLATFORM:
            return entry  # type: ignore[no-any-return]
    raise bad("the manifest list has no linux/amd64 image")


def _tag(annotations: Mapping[str, Any]) -> str:
    """The name an OCI index entry gives its image: a full reference
    (``localhost/app:1``), not a bare tag (``latest``, which names no
    repository: such an image is loaded untagged)."""
    for key in ("io.containerd.image.name", REF_NAME):
        value = annotations.get(key)
        if (isinstance(value, str) and "/" in value) or (isinstance(value, str) and ":" in value):
            last = value.rsplit("/", 1)[-1]
            return value if ":" in last or "@" in last else f"{value}:latest"
    return ""
