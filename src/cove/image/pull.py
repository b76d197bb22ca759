"""``cove pull``: fetching an image from an OCI distribution registry with
skopeo (Debian's ``skopeo``), which speaks the v2 API with bearer-token
and basic auth, picks linux/amd64 from a manifest list and checks every
blob's digest; it writes an OCI archive that the store then loads (and
checks again). Skopeo is used rather than a home-made registry client:
the token dance, redirects to blob storage, retries and mirrors are its
daily work.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from cove.errors import InvalidArgument, NotFound, Unavailable
from cove.image.reference import Reference

_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def fetch(
    ref: Reference,
    workdir: Path,
    *,
    insecure: bool = False,
    creds: str = "",
    authfile: str = "",
    quiet: bool = True,
) -> Path:
    """Downloads ``ref`` into an OCI archive under ``workdir``; returns its
    path (the caller removes it). Raises ``Unavailable`` without skopeo,
    ``NotFound``/``InvalidArgument`` with the registry's word."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise Unavailable("cove pull needs skopeo: apt-get install skopeo")
    host = ref.remote().split("/", 1)[0]
    plain = insecure or host.split(":")[0] in _LOOPBACK or host.startswith("[::1]")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pull-", dir=workdir))
    out = tmp / "image.tar"
    name = str(ref) if ref.registry else ref.remote()
    argv = [
        skopeo, "copy", "--override-os", "linux", "--override-arch", "amd64",
        f"--src-tls-verify={'false' if plain else 'true'}",
    ]  # fmt: skip
    if quiet:
        argv.append("--quiet")
    if creds:
        argv += ["--src-creds", creds]
    if authfile:
        argv += ["--authfile", authfile]
    dest = f"oci-archive:{out}:{name}" if not ref.digest else f"oci-archive:{out}"
    argv += [f"docker://{ref.remote()}", dest]
    try:
        res = subprocess.run(argv, stdout=None if not quiet else subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, timeout=3600)  # fmt: skip
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Unavailable(f"pulling {ref} timed out") from None
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        why = _reason(res.stderr)
        if "manifest unknown" in why or "not found" in why.lower():
            raise NotFound(f"image {ref} not found in the registry: {why}", image=str(ref))
        raise InvalidArgument(f"cannot pull {ref}: {why}", image=str(ref))
    return out


def _reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else "skopeo failed"
    return text.removeprefix('time="').split('msg="', 1)[-1].rstrip('"')[:400]
