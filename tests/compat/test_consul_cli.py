"""`cove service`, `cove kv` and `cove members` against the /v1 API served
on a Unix socket, through the CLI's own socket client."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import backends
import pytest

from cove.agent.consul import ConsulServer
from cove.cli import registry as registry_cli
from cove.cli.client import AgentClient
from cove.clock import SystemClock
from cove.errors import NotFound
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd


@pytest.fixture(scope="module")
def sock(tmp_path_factory: pytest.TempPathFactory, backend_store: Store) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cli") / "agent.sock"
    with ConsulServer(backend_store, SystemClock(), node_name="cli-node", unix_path=str(path)):
        yield path


def cove(sock: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cove")
    registry_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args, AgentClient(sock)))


def test_service_register_ls_inspect_deregister(
    sock: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "svc.json"
    spec.write_text(json.dumps({"Name": "shop", "ID": "shop-1", "Port": 80, "Tags": ["eu"],
                                "Check": {"TTL": "60s", "Status": "passing"}}))  # fmt: skip
    assert cove(sock, "service", "register", "-f", str(spec)) == 0
    capsys.readouterr()
    assert cove(sock, "service", "ls") == 0
    out = capsys.readouterr().out
    assert "shop" in out and "1/1" in out and "eu" in out
    assert cove(sock, "service", "inspect", "shop") == 0
    assert json.loads(capsys.readouterr().out)[0]["Service"]["ID"] == "shop-1"
    assert cove(sock, "service", "deregister", "shop-1") == 0
    with pytest.raises(NotFound):
        cove(sock, "service", "inspect", "shop")


def test_kv_put_get_ls_rm(sock: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cove(sock, "kv", "put", "app/config", "hello") == 0
    assert cove(sock, "kv", "put", "app/other", "x") == 0
    capsys.readouterr()
    assert cove(sock, "kv", "get", "app/config") == 0
    assert capsys.readouterr().out == "hello"
    assert cove(sock, "kv", "ls", "app/") == 0
    assert capsys.readouterr().out.split() == ["app/config", "app/other"]
    assert cove(sock, "kv", "put", "app/config", "v2", "--cas", "1") == 5
    assert cove(sock, "kv", "rm", "app/", "--recurse") == 0
    with pytest.raises(NotFound):
        cove(sock, "kv", "get", "app/config")


def test_members(sock: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cove(sock, "members") == 0
    out = capsys.readouterr().out
    assert "cli-node" in out and "alive" in out
