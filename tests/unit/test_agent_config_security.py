"""Security settings of the agent: socket group, allowed hosts, HTTPS."""

from __future__ import annotations

from pathlib import Path

import pytest

from cove.agent.config import load
from cove.errors import InvalidArgument


def test_security_defaults() -> None:
    cfg = load({}, None, {})
    assert cfg.socket_group is None and cfg.https is None and cfg.http_allowed_hosts == ()
    assert not cfg.tls_verify_incoming


def test_security_settings_from_the_file(tmp_path: Path) -> None:
    f = tmp_path / "cove.toml"
    f.write_text(
        'socket_group = "root"\nhttp_allowed_hosts = ["Cove.Example"]\n'
        'https = "127.0.0.1:8501"\ntls_cert = "/c.pem"\ntls_key = "/k.pem"\n'
        'tls_ca = "/ca.pem"\ntls_verify_incoming = true\n'
    )
    cfg = load({}, f, {})
    assert cfg.socket_group == "root" and cfg.http_allowed_hosts == ("cove.example",)
    assert cfg.https == ("127.0.0.1", 8501) and cfg.tls_cert == Path("/c.pem")
    assert cfg.tls_ca == Path("/ca.pem") and cfg.tls_verify_incoming


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"socket_group": "no-such-group-cv"}, "unknown group 'no-such-group-cv'"),
        ({"https": "127.0.0.1:8501"}, "--https needs --tls-cert and --tls-key"),
        ({"https": "nowhere"}, "invalid https address"),
        (
            {
                "https": "127.0.0.1:8501",
                "tls_cert": "c",
                "tls_key": "k",
                "tls_verify_incoming": True,
            },
            "--tls-verify-incoming needs --tls-ca",
        ),
        ({"http_allowed_hosts": ("a.example:80",)}, "invalid --http-allowed-host"),
    ],
)
def test_bad_security_settings_are_named(flags: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load(flags, None, {})
