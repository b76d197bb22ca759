"""Agent settings: defaults, file, environment and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from cove.agent.config import load, parse_hostport
from cove.errors import InvalidArgument


def test_defaults_match_the_design() -> None:
    cfg = load({}, None, {})
    assert cfg.state_dir == Path("/var/lib/cove")
    assert cfg.socket == Path("/run/cove/agent.sock")
    assert cfg.http == ("127.0.0.1", 8500) and cfg.dns == ("127.0.0.1", 8600)
    assert cfg.store_url == "sqlite:/var/lib/cove/state.db"


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "cove.toml"
    f.write_text('state_dir = "/srv/a"\nhttp = "127.0.0.2:9500"\nlog_level = "debug"\n')
    env = {"COVE_STATE_DIR": "/srv/b", "COVE_SOCKET": "/tmp/x.sock"}
    cfg = load({"http": "off"}, f, env)
    assert cfg.state_dir == Path("/srv/b") and cfg.socket == Path("/tmp/x.sock")
    assert cfg.http is None and cfg.log_level == "debug"
    assert load({}, f, {}).http == ("127.0.0.2", 9500)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"http": "localhost:80"}, "invalid http address"),
        ({"http": "127.0.0.1:99999"}, "invalid http address"),
        ({"dns": "127.0.0.1"}, "invalid dns address"),
        ({"log_level": "loud"}, "invalid log level"),
    ],
)
def test_bad_settings_are_named(flags: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load(flags, None, {})


def test_unknown_file_settings_are_rejected(tmp_path: Path) -> None:
    f = tmp_path / "cove.toml"
    f.write_text("colour = 'blue'\n")
    with pytest.raises(InvalidArgument, match="colour"):
        load({}, f, {})


def test_ipv6_hostport() -> None:
    assert parse_hostport("[::1]:8600", "dns") == ("::1", 8600)


def test_acl_settings_from_file_and_flags(tmp_path: Path) -> None:
    assert load({}, None, {}).acl_enabled is False
    assert load({}, None, {}).acl_default_policy == "allow"  # Consul's default
    f = tmp_path / "cove.toml"
    f.write_text('acl_enabled = true\nacl_default_policy = "deny"\nacl_initial_management = "s"\n')
    cfg = load({}, f, {})
    assert (cfg.acl_enabled, cfg.acl_default_policy, cfg.acl_initial_management) == (
        True,
        "deny",
        "s",
    )
    assert load({"acl_default_policy": "allow"}, f, {}).acl_default_policy == "allow"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('acl_default_policy = "maybe"', "invalid ACL default policy 'maybe'"),
        ('acl_enabled = "yes"', "invalid acl_enabled"),
        ('acl_initial_management = ""', "invalid ACL initial management token"),
    ],
)
def test_bad_acl_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "cove.toml"
    f.write_text(text + "\n")
    with pytest.raises(InvalidArgument, match=message):
        load({}, f, {})


def test_http_connection_caps_from_file_and_flags(tmp_path: Path) -> None:
    default = load({}, None, {})
    assert (default.http_max_conns, default.http_max_conns_per_client) == (0, 200)
    f = tmp_path / "cove.toml"
    f.write_text("http_max_conns = 300\nhttp_max_conns_per_client = 0\n")
    cfg = load({}, f, {})
    assert (cfg.http_max_conns, cfg.http_max_conns_per_client) == (300, 0)
    assert load({"http_max_conns_per_client": 50}, f, {}).http_max_conns_per_client == 50


@pytest.mark.parametrize(
    "text", ["http_max_conns = -1", 'http_max_conns_per_client = "lots"', "http_max_conns = true"]
)
def test_bad_connection_caps_are_named(tmp_path: Path, text: str) -> None:
    f = tmp_path / "cove.toml"
    f.write_text(text + "\n")
    with pytest.raises(InvalidArgument, match="invalid http_max_conns"):
        load({}, f, {})
