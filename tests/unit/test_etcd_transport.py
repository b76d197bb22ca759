"""The etcd client's pure parts: which answers are retried and how, which
member is asked, and the agent's store settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cove.agent.config import load
from cove.clock import SystemClock
from cove.errors import InvalidArgument
from cove.store import open_store
from cove.store.etcd_transport import (
    COOLDOWN,
    Backoff,
    Endpoint,
    Failure,
    Members,
    classify_answer,
)


@pytest.mark.parametrize(
    ("code", "message", "status", "kind"),
    [
        (14, "etcdserver: leader changed", 503, Failure.SAFE),
        (14, "etcdserver: no leader", 503, Failure.SAFE),
        (8, "etcdserver: too many requests", 429, Failure.SAFE),
        (14, "etcdserver: request timed out", 503, Failure.UNKNOWN),
        (
            14,
            "etcdserver: request timed out, possibly due to previous leader failure",
            503,
            Failure.UNKNOWN,
        ),
        (14, "etcdserver: server stopped", 503, Failure.UNKNOWN),
        (14, "transport is closing", 503, Failure.UNKNOWN),
        (5, "etcdserver: requested lease not found", 404, None),
        (3, "etcdserver: duplicate key given in txn request", 400, None),
        (11, "etcdserver: mvcc: required revision has been compacted", 400, None),
        (8, "etcdserver: request is too large", 400, None),
    ],
)
def test_what_is_retried(code: int, message: str, status: int, kind: Failure | None) -> None:
    assert classify_answer(code, message, status) is kind


def test_members_are_sticky_and_skip_one_set_aside() -> None:
    a, b, c = (Endpoint(f"http://127.0.0.1:{p}") for p in (1, 2, 3))
    members = Members([a, b, c])
    assert members.current() is a
    assert members.current() is a  # sticky while it works
    members.failed(a)
    assert members.current() is b
    members.failed(b)
    assert members.current() is c
    members.failed(c)
    # Every one set aside: the one set aside longest ago is asked again.
    assert members.current() is a
    a.down_until = b.down_until = c.down_until = time.monotonic() - 1
    assert members.current() is a
    assert COOLDOWN > 0


def test_backoff_stays_within_its_deadline() -> None:
    backoff = Backoff(0.3)
    start = time.monotonic()
    waits = 0
    while backoff.wait():
        waits += 1
    assert time.monotonic() - start < 0.6
    assert waits >= 2


def test_endpoint_urls() -> None:
    assert Endpoint("127.0.0.1:2379").url == "http://127.0.0.1:2379"
    assert Endpoint("https://[::1]:2379").url == "https://[::1]:2379"
    assert Endpoint("https://127.0.0.1:2379").tls is not None
    with pytest.raises(InvalidArgument):
        Endpoint("ftp://127.0.0.1:2379")
    with pytest.raises(InvalidArgument):
        Endpoint("http://127.0.0.1:99999")


def test_store_urls() -> None:
    clock = SystemClock()
    for bad in ("etcd://", "etcd://a:1,,b:2", "etcds://user@a:1", "etcd://a:1/path"):
        with pytest.raises(InvalidArgument):
            open_store(bad, clock)
    store = open_store("etcd://127.0.0.1:1,127.0.0.1:2", clock, timeout=1)
    assert store.describe() == "etcd at http://127.0.0.1:1,http://127.0.0.1:2"  # type: ignore[attr-defined]
    store.close()


def test_agent_store_settings(tmp_path: Path) -> None:
    cfg = load(
        {"store": "etcds://h:2379", "store_ca": tmp_path / "ca.pem", "store_timeout": 3},
        None,
        {},
    )
    assert cfg.store_ca == tmp_path / "ca.pem" and cfg.store_timeout == 3.0
    assert load({}, None, {}).store_timeout == 5.0
    for bad in (0, -1, "soon", True, 601):
        with pytest.raises(InvalidArgument, match="store_timeout"):
            load({"store_timeout": bad}, None, {})
    toml = tmp_path / "agent.toml"
    toml.write_text('store = "etcds://h:2379"\nstore_cert = "/x/c.pem"\nstore_key = "/x/k.pem"\n')
    cfg = load({}, toml, {})
    assert cfg.store_cert == Path("/x/c.pem") and cfg.store_key == Path("/x/k.pem")
