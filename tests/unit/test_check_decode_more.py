"""Decoding UDP, H2PING and alias check definitions (pure)."""

from __future__ import annotations

import pytest

from cove.errors import InvalidArgument
from cove.registry.decode import check_from_json
from cove.registry.types import (
    AliasTarget,
    CheckDefinition,
    CheckKind,
    H2PingProbe,
    ServiceInstance,
    UdpProbe,
)


def test_h2ping_speaks_tls_unless_told_otherwise_and_round_trips() -> None:
    d, _ = check_from_json({"Name": "h", "H2PING": "127.0.0.1:8443", "Interval": "5s"})
    assert d.kind is CheckKind.H2PING and d.spec == H2PingProbe("127.0.0.1:8443")
    assert d.interval == 5.0
    plain, _ = check_from_json(
        {"name": "h", "h2ping": "[::1]:8080", "h2ping_use_tls": False, "interval": "1s"}
    )
    assert plain.spec == H2PingProbe("[::1]:8080", use_tls=False)
    assert CheckDefinition.from_json(plain.to_json()) == plain


def test_udp_check_decodes_and_round_trips() -> None:
    d, _ = check_from_json({"Name": "u", "UDP": "localhost:53", "Interval": "2s", "Timeout": "1s"})
    assert (d.kind, d.spec, d.timeout) == (CheckKind.UDP, UdpProbe("localhost:53"), 1.0)
    assert CheckDefinition.from_json(d.to_json()) == d


@pytest.mark.parametrize(
    "check",
    [
        {"Name": "u", "UDP": "localhost", "Interval": "1s"},
        {"Name": "u", "UDP": "localhost:0", "Interval": "1s"},
        {"Name": "h", "H2PING": ":443", "Interval": "1s"},
        {"Name": "h", "H2PING": "localhost:443"},
        {"Name": "h", "H2PING": "localhost:443", "H2PingUseTLS": "yes", "Interval": "1s"},
        {"Name": "x", "H2PING": "a:1", "UDP": "a:1", "Interval": "1s"},
    ],
)
def test_bad_definitions_name_the_problem(check: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_from_json(check)
    assert "Invalid check" in err.value.message or "must be a boolean" in err.value.message


def test_alias_check_decodes_and_a_service_cannot_alias_itself() -> None:
    d, _ = check_from_json({"Name": "a", "AliasService": "web", "AliasNode": "n1"})
    assert (d.kind, d.spec) == (CheckKind.ALIAS, AliasTarget(node="n1", service="web"))
    assert CheckDefinition.from_json(d.to_json()) == d
    own = ServiceInstance(id="web", name="web", node="n1")
    with pytest.raises(InvalidArgument) as err:
        check_from_json({"AliasService": "web"}, default_id="service:web", service=own)
    assert "alias itself" in err.value.message
