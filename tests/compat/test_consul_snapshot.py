"""GET and PUT /v1/snapshot and `cove snapshot save|restore`: a gzip'd tar
of the whole store that says what it is, restored whole or refused whole.
py-consul's snapshot calls and the cove CLI, on SQLite and etcd."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import backends
import consul
import pytest

from cove.agent.consul import ConsulServer
from cove.cli.main import main as cove_main
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd
ROOT = "7b1b5b8e-1111-4c1a-9d7e-000000000003"


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="snap-a") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def put_raw(server: ConsulServer, data: bytes, token: str = "") -> tuple[int, bytes]:
    headers = {"X-Consul-Token": token} if token else {}
    req = urllib.request.Request(
        f"{server.url}/v1/snapshot", data=data, method="PUT", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def members(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar:
            f = tar.extractfile(info)
            assert f is not None
            out[info.name] = f.read()
    return out


def archive(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def test_save_is_a_self_describing_gzipd_tar(c: consul.Consul) -> None:
    c.kv.put("snap/described", "yes")
    files = members(c.snapshot.save())
    assert set(files) == {"meta.json", "state.json", "SHA256SUMS"}
    meta = json.loads(files["meta.json"])
    assert (meta["Format"], meta["Version"], meta["Datacenter"], meta["Node"]) == (
        "cove-snapshot",
        1,
        "dc1",
        "snap-a",
    )
    keys = {e["Key"] for e in json.loads(files["state.json"])["Keys"]}
    assert meta["Keys"] == len(keys) and "registry/kv/snap/described" in keys
    sums = files["SHA256SUMS"].decode()
    assert f"{hashlib.sha256(files['state.json']).hexdigest()}  state.json" in sums


def test_restore_puts_back_exactly_what_was_saved(c: consul.Consul) -> None:
    c.kv.put("snap/a", "1")
    c.kv.delete("snap/b")
    c.agent.service.register("snap-web", service_id="snap-web-1", port=80)
    saved = c.snapshot.save()
    c.kv.put("snap/a", "2")
    c.kv.put("snap/b", "new")
    c.agent.service.deregister("snap-web-1")
    assert c.snapshot.restore(saved)
    assert c.kv.get("snap/a")[1]["Value"] == b"1"
    assert c.kv.get("snap/b")[1] is None
    assert "snap-web-1" in c.agent.services()
    # The agent's liveness (lease-bound) is its own: still passing.
    _, checks = c.health.node("snap-a")
    assert [ch["Status"] for ch in checks if ch["CheckID"] == "serfHealth"] == ["passing"]


def test_corrupt_or_foreign_snapshots_are_refused_whole(
    c: consul.Consul, server: ConsulServer
) -> None:
    c.kv.put("snap/guard", "before")
    good = c.snapshot.save()
    files = members(good)
    state = json.loads(files["state.json"])
    for e in state["Keys"]:
        if e["Key"] == "registry/kv/snap/guard":
            e["Value"] = "dGFtcGVyZWQ="  # "tampered", sums left as they were
    tampered = archive({**files, "state.json": json.dumps(state).encode()})
    consul_like = archive({"meta.json": b"{}", "state.bin": b"\x00raft", "SHA256SUMS": b""})
    for data, why in (
        (good[: len(good) // 2], b"not a gzip'd tar"),
        (b"\x00" * 100, b"not a gzip'd tar"),
        (tampered, b"does not match its SHA-256"),
        (consul_like, b"Consul snapshot"),
        (archive({"meta.json": files["meta.json"]}), b"no state.json"),
    ):
        c.kv.put("snap/guard", "after")
        status, body = put_raw(server, data)
        assert status == 400 and b"nothing restored" in body and why in body, body
        assert c.kv.get("snap/guard")[1]["Value"] == b"after"


def test_a_large_restore_is_complete(c: consul.Consul) -> None:
    """More changes than etcd takes in one transaction (--max-txn-ops 128):
    every key still comes back and the extra ones go."""
    ops = [{"KV": {"Verb": "set", "Key": f"big/{i:03d}", "Value": "MQ=="}} for i in range(64)]
    for start in range(0, 320, 64):
        batch = [{"KV": {**op["KV"], "Key": f"big/{start + i:03d}"}} for i, op in enumerate(ops)]
        c.txn.put(batch)
    saved = c.snapshot.save()
    assert c.kv.delete("big/", recurse=True)  # 320 keys: one prefix delete, on etcd too
    for start in range(0, 192, 64):
        batch = [{"KV": {**op["KV"], "Key": f"extra/{start + i:03d}"}} for i, op in enumerate(ops)]
        c.txn.put(batch)
    assert c.snapshot.restore(saved)
    assert len(c.kv.get("big/", keys=True)[1]) == 320
    assert c.kv.get("extra/", keys=True)[1] is None


def test_cli_saves_and_restores(c: consul.Consul, server: ConsulServer, tmp_path: Path) -> None:
    c.kv.put("snap/cli", "saved")
    path = tmp_path / "backup.snap"
    assert cove_main(["--host", server.url, "snapshot", "save", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    c.kv.put("snap/cli", "changed")
    assert cove_main(["--host", server.url, "snapshot", "restore", str(path)]) == 0
    assert c.kv.get("snap/cli")[1]["Value"] == b"saved"
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"garbage")
    c.kv.put("snap/cli", "changed")
    assert cove_main(["--host", server.url, "snapshot", "restore", str(bad)]) != 0
    assert c.kv.get("snap/cli")[1]["Value"] == b"changed"


def test_snapshots_need_acl_write(tmp_path_factory: pytest.TempPathFactory) -> None:
    with backends.acl_server(tmp_path_factory.mktemp("acl"), "snap-acl", ROOT) as srv:
        root = consul.Consul(host="127.0.0.1", port=srv.port, token=ROOT)
        anon = consul.Consul(host="127.0.0.1", port=srv.port)
        with pytest.raises(consul.ACLPermissionDenied):
            anon.snapshot.save()
        data = root.snapshot.save()
        assert put_raw(srv, data)[0] == 403
        assert put_raw(srv, data, ROOT)[0] == 200
