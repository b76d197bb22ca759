"""`cove pull` from a real OCI distribution registry (Debian's
docker-registry) that the test starts on the loopback of its own network
namespace: anonymous, then behind htpasswd auth (the registry answers 401
with a challenge and skopeo authenticates)."""

from __future__ import annotations

import crypt
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

from imageutil import Img, Layer, busybox_layer, oci_archive

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

REGISTRY = "/usr/bin/docker-registry"
PORT = 5055


def _registry(tmp_path: Path, auth: bool) -> Iterator[str]:
    if shutil.which("skopeo") is None or not Path(REGISTRY).exists():
        pytest.skip("needs skopeo and docker-registry (Debian packages)")
    conf = tmp_path / "registry.yml"
    lines = [
        "version: 0.1",
        "log: {level: error}",
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'blobs'}}}}}",
        f"http: {{addr: '127.0.0.1:{PORT}'}}",
    ]
    if auth:
        salt = crypt.mksalt(crypt.METHOD_BLOWFISH)
        (tmp_path / "htpasswd").write_text(f"tester:{crypt.crypt('s3cret', salt)}\n")
        lines.append(f"auth: {{htpasswd: {{realm: cove-test, path: {tmp_path / 'htpasswd'}}}}}")
    conf.write_text("\n".join(lines) + "\n")
    with open(tmp_path / "registry.log", "wb") as log:
        proc = subprocess.Popen([REGISTRY, "serve", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((tmp_path / "registry.log").read_text()) from None
                time.sleep(0.1)
        yield f"127.0.0.1:{PORT}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def registry(agent: Any, tmp_path: Path) -> Iterator[str]:
    need_containers(agent)
    yield from _registry(tmp_path, auth=False)


@pytest.fixture
def auth_registry(agent: Any, tmp_path: Path) -> Iterator[str]:
    need_containers(agent)
    yield from _registry(tmp_path, auth=True)


def _push(tmp_path: Path, image: Img, dest: str, *creds: str) -> None:
    archive = tmp_path / "push.tar"
    oci_archive(archive, image, "push:1")
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *creds,
         f"oci-archive:{archive}", f"docker://{dest}"],
        check=True, capture_output=True,
    )  # fmt: skip


def test_pull_then_run(agent: Any, registry: str, tmp_path: Path) -> None:
    image = Img([busybox_layer(), Layer({"hello": b"pulled\n"})], cmd=["cat", "/hello"])
    _push(tmp_path, image, f"{registry}/team/hello:1")
    res = agent.cli("pull", f"{registry}/team/hello:1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("sha256:")  # not a terminal: just the ID
    assert f"{registry}/team/hello" in agent.ok("images")
    name = agent.ok("run", "-d", f"{registry}/team/hello:1").strip()
    eventually(lambda: inspect(agent, name)["state"]["status"] == "exited")
    assert agent.ok("logs", name) == "pulled\n"
    # pulling again stores nothing twice
    layers = sorted((agent.state_dir / "images" / "layers").iterdir())
    agent.ok("pull", f"{registry}/team/hello:1")
    assert sorted((agent.state_dir / "images" / "layers").iterdir()) == layers

    res = agent.cli("pull", f"{registry}/team/nothere:1")
    assert res.returncode != 0 and "nothere" in res.stderr
    assert not list((agent.state_dir / "images" / "tmp-pull").iterdir())


def test_pull_with_credentials(agent: Any, auth_registry: str, tmp_path: Path) -> None:
    image = Img([busybox_layer()], cmd=["true"])
    _push(tmp_path, image, f"{auth_registry}/private:1", "--dest-creds", "tester:s3cret")
    res = agent.cli("pull", f"{auth_registry}/private:1")
    assert res.returncode != 0 and "unauthorized" in res.stderr.lower()
    assert "private" not in agent.ok("images")
    agent.ok("pull", "--creds", "tester:s3cret", f"{auth_registry}/private:1")
    assert "private" in agent.ok("images")
