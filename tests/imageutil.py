"""Images built in tests from the machine's busybox-static: layer tars,
their configs, and the two archive formats ``podman save`` writes
(docker-archive and OCI), made here byte by byte so every test knows
exactly what it loads."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSYBOX = "/bin/busybox"
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\n"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    """Entries: path -> bytes (a file), None (a directory), or
    ("link", target) for a symbolic link."""

    entries: dict[str, Any] = field(default_factory=dict)
    # path -> {attribute: value}: written as tar's SCHILY.xattr.* pax headers
    xattrs: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path, value in self.entries.items():
                info = tarfile.TarInfo(path)
                info.mtime = 1_700_000_000
                for attr, data in self.xattrs.get(path, {}).items():
                    # tarfile decodes pax values as UTF-8 (surrogateescape)
                    info.pax_headers["SCHILY.xattr." + attr] = data.decode(
                        "utf-8", "surrogateescape"
                    )
                if value is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    t.addfile(info)
                elif isinstance(value, tuple):
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, value[1], 0o777
                    t.addfile(info)
                else:
                    info.size, info.mode = len(value), 0o755
                    t.addfile(info, io.BytesIO(value))
        return buf.getvalue()


def busybox_layer() -> Layer:
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    entries: dict[str, Any] = {
        d: None for d in ("bin", "etc", "tmp", "root", "home", "home/app", "proc", "sys", "dev")
    }
    entries["bin/busybox"] = Path(BUSYBOX).read_bytes()
    for a in applets:
        if a != "busybox":
            entries[f"bin/{a}"] = ("link", "busybox")
    entries["etc/passwd"] = PASSWD.encode()
    entries["etc/group"] = GROUP.encode()
    entries["etc/os-release"] = b"NAME=cove-test\n"
    return Layer(entries)


@dataclass
class Img:
    layers: Sequence[Layer]
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ("/bin/sh",)
    env: Sequence[str] = ("PATH=/bin", "GREETING=from-image")
    workdir: str = ""
    user: str = ""
    volumes: Sequence[str] = ()

    def config(self, diff_ids: Sequence[str]) -> bytes:
        return json.dumps({
            "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
            "config": {"Entrypoint": list(self.entrypoint) or None, "Cmd": list(self.cmd),
                       "Env": list(self.env), "WorkingDir": self.workdir, "User": self.user,
                       "Volumes": {v: {} for v in self.volumes} or None},
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }).encode()  # fmt: skip


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    t.addfile(info, io.BytesIO(data))


def docker_archive(path: Path, image: Img, tag: str) -> str:
    """Writes a docker-archive; returns the image ID."""
    tars = [layer.tar() for layer in image.layers]
    config = image.config([sha(t) for t in tars])
    cid = sha(config)[7:]
    with tarfile.open(path, "w") as t:
        names = []
        for data in tars:
            name = f"{sha(data)[7:]}/layer.tar"
            _add(t, name, data)
            names.append(name)
        _add(t, f"{cid}.json", config)
        manifest = [{"Config": f"{cid}.json", "RepoTags": [tag], "Layers": names}]
        _add(t, "manifest.json", json.dumps(manifest).encode())
    return "sha256:" + cid


def oci_archive(
    path: Path, image: Img, tag: str, *, index: bool = False, zstd: bool = False
) -> str:
    """Writes an OCI layout tar with gzip layers (``zstd``: zstd ones, as
    podman can push; ``index``: behind a manifest list with an arm64
    decoy); returns the image ID."""
    tars = [layer.tar() for layer in image.layers]
    if zstd:
        import zstandard

        gz = [zstandard.ZstdCompressor().compress(t) for t in tars]
    else:
        gz = [gzip.compress(t, mtime=0) for t in tars]
    media = "application/vnd.oci.image.layer.v1.tar+" + ("zstd" if zstd else "gzip")
    config = image.config([sha(t) for t in tars])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": media,
                    "digest": sha(g), "size": len(g)} for g in gz],
    }).encode()  # fmt: skip
    blobs = {sha(b): b for b in (*gz, config, manifest)}
    top = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(manifest),
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    if index:
        decoy = b'{"schemaVersion": 2, "layers": []}'
        blobs[sha(decoy)] = decoy
        lst = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": sha(decoy), "size": len(decoy),
                 "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": sha(manifest), "size": len(manifest),
                 "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }).encode()  # fmt: skip
        blobs[sha(lst)] = lst
        top = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": sha(lst),
            "size": len(lst),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    with tarfile.open(path, "w") as t:
        _add(t, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        for digest, data in blobs.items():
            _add(t, f"blobs/sha256/{digest[7:]}", data)
        _add(t, "index.json", json.dumps({"schemaVersion": 2, "manifests": [top]}).encode())
    return sha(config)
