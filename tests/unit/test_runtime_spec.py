"""What `cove run` accepts and refuses, and the published-port table."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cove.errors import InvalidArgument
from cove.runtime import etc, ports
from cove.runtime.spec import Container, PortMapping, Proto, RunSpec
from cove.runtime.state import RestartPolicy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", PortMapping(8080, 80)),
        ("53:53/udp", PortMapping(53, 53, Proto.UDP)),
        (
            "127.0.0.1:9000:90/tcp",
            PortMapping(9000, 90, host_ip=ipaddress.IPv4Address("127.0.0.1")),
        ),
    ],
)
def test_port_specs(text: str, expected: PortMapping) -> None:
    assert PortMapping.parse(text) == expected
    assert PortMapping.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["80", "a:b", "0:80", "70000:80", "80:80/sctp", "1.2.3:80:80", ""])
def test_bad_port_specs_name_the_problem(text: str) -> None:
    with pytest.raises(InvalidArgument, match="port"):
        PortMapping.parse(text)


def base(**extra: object) -> dict[str, object]:
    return {"command": ["sleep", "1"], "networks": ["vnet"], **extra}


def test_run_spec_round_trip() -> None:
    spec = RunSpec.from_json(
        base(name="web", env=["A=1", "B=x=y"], labels=["tier"], ports=["8080:80"],
             restart="on-failure", services=["web:8080"], ip="10.89.0.9")
    )  # fmt: skip
    assert spec.env == {"A": "1", "B": "x=y"}
    assert spec.labels == {"tier": ""}
    assert spec.restart is RestartPolicy.ON_FAILURE
    assert spec.attachments[0].ipv4 == ipaddress.IPv4Address("10.89.0.9")
    assert spec.services == ("web:8080",)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"command": []}, "command"),
        (base(name="Bad_Name"), "container name"),
        (base(restart="sometimes"), "restart policy"),
        (base(env=["NOEQUALS"]), "KEY=VALUE"),
        (base(ip="10.0.0.300"), "not an IP"),
        (base(ip="fd00::1"), "IPv4"),
        (base(ports=["8080:80", "8080:81"]), "published twice"),
        ({"command": ["x"], "ports": ["80:80"]}, "needs a --network"),
        (base(services=["web"]), "NAME:PORT"),
        (base(networks=["a", "b"], ip="10.0.0.2"), "exactly one"),
        (base(workdir="rel"), "absolute"),
    ],
)
def test_bad_run_specs_are_refused_with_a_clear_message(
    body: dict[str, object], words: str
) -> None:
    with pytest.raises(InvalidArgument, match=words):
        RunSpec.from_json(body)


def test_container_json_round_trip() -> None:
    c = Container(
        id="ab" * 32,
        name="web",
        argv=("sleep", "1"),
        hostname="web",
        ports=(PortMapping(1, 2),),
        networks=("a", "b"),
        restart=RestartPolicy.ALWAYS,
    )
    assert Container.from_json(c.to_json()) == c


def test_ports_table_dnats_local_and_masquerades_loopback_and_hairpin() -> None:
    pub = ports.Published(PortMapping(8080, 80), ipaddress.IPv4Address("10.89.0.2"), "cv-x", "web")
    objs = ports.compile_table([pub])
    rules = [o["rule"] for o in objs if "rule" in o]
    dnat = [r for r in rules if any("dnat" in e for e in r["expr"])]
    assert {r["chain"] for r in dnat} == {"prerouting", "output"}
    assert dnat[0]["expr"][-1] == {"dnat": {"family": "ip", "addr": "10.89.0.2", "port": 80}}
    masq = [r for r in rules if r["chain"] == "postrouting"]
    assert len(masq) == 2
    assert ports.localnet_bridges([pub]) == {"cv-x"}


def test_no_published_ports_leaves_empty_chains() -> None:
    objs = ports.compile_table([])
    assert all("chain" in o for o in objs)


def test_hosts_file_names_the_container_on_each_address() -> None:
    text = etc.hosts("web", "web", [ipaddress.IPv4Address("10.89.0.2")])
    assert "10.89.0.2\tweb\n" in text
    assert text.startswith("127.0.0.1\tlocalhost")


def test_resolv_conf_points_at_gateway_or_keeps_host() -> None:
    assert etc.resolv_conf([ipaddress.IPv4Address("10.89.0.1")], "x") == (
        "nameserver 10.89.0.1\noptions ndots:0\n"
    )
    assert etc.resolv_conf([], "nameserver 127.0.0.53\n") == "nameserver 127.0.0.53\n"


def test_etc_files_are_rewritten_in_place_to_exactly_the_new_text(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    assert etc.write_in_place(path, "a\nbbbbbbbb\n")
    inode = path.stat().st_ino
    assert not etc.write_in_place(path, "a\nbbbbbbbb\n")  # unchanged: not written
    assert etc.write_in_place(path, "a\n")  # shorter
    assert path.read_text() == "a\n"
    assert etc.write_in_place(path, "a\nccccccccccccc\n")  # longer
    assert path.read_text() == "a\nccccccccccccc\n"
    assert path.stat().st_ino == inode  # the container's bind mount still sees it
