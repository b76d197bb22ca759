"""What `cove run` accepts and refuses, and the published-port table."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cove.errors import InvalidArgument
from cove.model import Network, Subnet
from cove.runtime import etc, ports
from cove.runtime.spec import (
    Container,
    PortMapping,
    Proto,
    RunSpec,
    check_port_families,
    expand_ports,
)
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
        (
            "[2001:db8::1]:8080:80/udp",
            PortMapping(8080, 80, Proto.UDP, ipaddress.IPv6Address("2001:db8::1")),
        ),
        ("[::]:8080:80", PortMapping(8080, 80, host_ip=ipaddress.IPv6Address("::"))),
    ],
)
def test_port_specs(text: str, expected: PortMapping) -> None:
    assert PortMapping.parse(text) == expected
    assert PortMapping.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["80", "a:b", "80:0", "70000:80", "80:80/sctp", "1.2.3:80:80", ""])
def test_bad_port_specs_name_the_problem(text: str) -> None:
    with pytest.raises(InvalidArgument, match="port"):
        PortMapping.parse(text)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[2001:db8::1:8080:80", "missing ']'"),
        ("[2001:db8::1]8080:80", "after ']'"),
        ("[2001:db8::1]:8080", "HOSTPORT:PORT"),
        ("[10.0.0.1]:8080:80", "not an IPv6 address"),
        ("[]:8080:80", "not an IPv6 address"),
        ("2001:db8::1:8080:80", "IPv6 HOSTIP in brackets"),
        ("[::1]:8080:80", "loopback address ::1 cannot be published"),
        ("[fe80::1%eth0]:8080:80", "cannot be published"),
        ("[::ffff:10.0.0.1]:8080:80", "cannot be published"),
        ("[2001:db8::1]:8080:0", "out of range"),
    ],
)
def test_bad_ipv6_port_specs_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(words)) as err:
        PortMapping.parse(text)
    assert "\n" not in str(err.value)


def test_ipv6_host_ip_needs_an_ipv6_network() -> None:
    sub4 = Subnet(ipaddress.ip_network("10.89.0.0/24"), ipaddress.ip_address("10.89.0.1"))
    sub6 = Subnet(ipaddress.ip_network("fd00:1::/64"), ipaddress.ip_address("fd00:1::1"))
    v4only = Network(id="n", name="vnet", bridge="cv-x", subnets=(sub4,))
    dual = replace(v4only, subnets=(sub4, sub6))
    v6 = PortMapping.parse("[fd00::9]:8080:80")
    with pytest.raises(InvalidArgument, match="no IPv6 address on network vnet"):
        check_port_families([PortMapping(1, 2), v6], v4only)
    check_port_families([PortMapping(1, 2), v6, PortMapping.parse("10.0.0.1:3:4")], dual)


def test_a_host_port_is_claimed_once_for_both_families() -> None:
    keys = {
        PortMapping.parse(t).claim_key for t in ("8080:80", "[fd00::1]:8080:81", "1.2.3.4:8080:82")
    }
    assert keys == {"ports/tcp/8080"}
    with pytest.raises(InvalidArgument, match="published twice"):
        RunSpec.from_json(base(ports=["8080:80", "[fd00::1]:8080:81"]))


def base(**extra: object) -> dict[str, object]:
    return {"command": ["sleep", "1"], "networks": ["vnet"], **extra}


def test_host_networking_has_no_attachment_and_discards_ports() -> None:
    spec = RunSpec.from_json(base(networks=["host"], ports=["8080:80"], publish_all=True,
                                  expose=["90"]))  # fmt: skip
    assert spec.host_network and spec.attachments == () and spec.ports == ()
    assert not spec.default_network
    assert not RunSpec.from_json(base()).host_network


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
        (base(name="bad/name"), "container name"),
        (base(name="_x"), "container name"),
        (base(restart="on-failure:x"), "restart policy"),
        (base(restart="always:3"), "restart policy"),
        (base(restart="sometimes"), "restart policy"),
        (base(env=["NOEQUALS"]), "KEY=VALUE"),
        (base(ip="10.0.0.300"), "not an IP"),
        (base(ip="fd00::1"), "IPv4"),
        (base(ports=["8080:80", "8080:81"]), "published twice"),
        ({"command": ["x"], "networks": ["none"], "ports": ["80:80"]}, "not --network none"),
        (base(networks=["none", "vnet"]), "cannot go with"),
        (base(networks=["host", "vnet"]), "host cannot go with other networks"),
        (base(networks=["host"], ip="10.0.0.2"), "--ip cannot go with --network host"),
        (base(networks=["host"], aliases=["a"]), "--alias cannot go with --network host"),
        (base(networks=["host"], services=["w:80"]), "--service cannot go with"),
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


V4 = ipaddress.IPv4Address("10.89.0.2")
V6 = ipaddress.IPv6Address("fd00:89::2")


def dnats(objs: list[dict[str, Any]], chain: str = "prerouting") -> list[list[dict[str, Any]]]:
    rules = [o["rule"] for o in objs if "rule" in o and o["rule"]["chain"] == chain]
    return [r["expr"] for r in rules if any("dnat" in e for e in r["expr"])]


def test_ports_table_dnats_local_and_masquerades_loopback_and_hairpin() -> None:
    pub = ports.Published(PortMapping(8080, 80), V4, None, "cv-x", "web")
    objs = ports.compile_table([pub])
    rules = [o["rule"] for o in objs if "rule" in o]
    assert len(dnats(objs)) == len(dnats(objs, "output")) == 1
    assert dnats(objs)[0][-1] == {"dnat": {"family": "ip", "addr": "10.89.0.2", "port": 80}}
    masq = [r for r in rules if r["chain"] == "postrouting"]
    assert len(masq) == 3  # loopback, the bridge, and the container to itself
    to_itself = [r for r in masq if "own published port" in r.get("comment", "")]
    assert [e["match"]["right"] for e in to_itself[0]["expr"][1:3]] == ["10.89.0.2"] * 2
    assert ports.localnet_bridges([pub]) == {"cv-x"}


def test_a_mapping_without_host_ip_publishes_each_family_to_its_own_address() -> None:
    pub = ports.Published(PortMapping(8080, 80, Proto.UDP), V4, V6, "cv-x", "web")
    objs = ports.compile_table([pub])
    for chain in ("prerouting", "output"):
        v4, v6 = dnats(objs, chain)
        assert v4[0]["match"]["right"] == "ipv4" and v6[0]["match"]["right"] == "ipv6"
        assert v6[-1] == {"dnat": {"family": "ip6", "addr": "fd00:89::2", "port": 80}}
        local = {"fib": {"result": "type", "flags": ["daddr"]}}
        assert any(e["match"]["left"] == local for e in v6[:-1] if "match" in e)
        # ::1 cannot be DNATed away from the host: left out, not half-published
        loop = {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}}
        assert {**loop, "right": "::1"} in [e["match"] for e in v6[:-1] if "match" in e]
    # hairpin masquerade on the bridge holds for both families (no nfproto)
    hairpin = [
        r["rule"]["expr"]
        for r in objs
        if "rule" in r and r["rule"]["chain"] == "postrouting" and len(r["rule"]["expr"]) == 4
        and r["rule"]["expr"][1]["match"]["left"] == {"meta": {"key": "iifname"}}
    ]  # fmt: skip
    assert len(hairpin) == 1 and not any("nfproto" in json.dumps(e) for e in hairpin[0])


def test_a_host_ip_publishes_on_its_own_family_only() -> None:
    v6 = ports.Published(PortMapping.parse("[2001:db8::1]:8080:80"), V4, V6, "cv-x", "a")
    v4 = ports.Published(PortMapping.parse("10.0.0.1:9090:90"), V4, V6, "cv-x", "b")
    any6 = ports.Published(PortMapping.parse("[::]:7070:70"), V4, V6, "cv-x", "c")
    rules = dnats(ports.compile_table([v6, v4, any6]))
    by_port = {
        next(e["match"]["right"] for e in r if "match" in e and "th" in json.dumps(e)): r
        for r in rules
    }
    assert sorted(by_port) == [7070, 8080, 9090] and len(rules) == 3
    daddr6 = {"protocol": "ip6", "field": "daddr"}
    pinned = {"op": "==", "left": {"payload": daddr6}, "right": "2001:db8::1"}
    assert by_port[8080][1]["match"] == pinned
    assert by_port[9090][-1]["dnat"] == {"family": "ip", "addr": "10.89.0.2", "port": 90}
    assert by_port[7070][-1]["dnat"]["family"] == "ip6"
    # route_localnet only where the host's 127.0.0.1 may reach a mapping
    assert ports.localnet_bridges([v6, any6, v4]) == set()
    lo = ports.Published(PortMapping.parse("127.0.0.1:9191:91"), V4, V6, "cv-y", "d")
    assert ports.localnet_bridges([v4, lo]) == {"cv-y"}


def test_a_container_without_an_address_in_a_family_is_not_published_there() -> None:
    v6only = ports.Published(PortMapping(8080, 80), None, V6, "cv-y", "a")
    pinned = ports.Published(PortMapping.parse("[2001:db8::1]:9090:90"), V4, None, "cv-x", "b")
    rules = dnats(ports.compile_table([v6only, pinned]))
    assert [r[-1]["dnat"]["family"] for r in rules] == ["ip6"]


def test_no_published_ports_leaves_empty_chains() -> None:
    objs = ports.compile_table([])
    assert all("chain" in o for o in objs)


def test_hosts_file_names_the_container_on_each_address() -> None:
    text = etc.hosts("web", "web", [ipaddress.IPv4Address("10.89.0.2")])
    assert "10.89.0.2\tweb\n" in text
    assert text.startswith("127.0.0.1\tlocalhost")


def test_a_host_network_container_gets_the_hosts_hosts_file() -> None:
    host = "127.0.0.1\tlocalhost\n10.0.0.5\tdb.lan"
    assert etc.host_hosts(host, [("x", "10.1.1.1")]) == host + "\n10.1.1.1\tx\n"
    assert etc.host_hosts("") == "127.0.0.1\tlocalhost\n::1\tlocalhost\n"


def test_a_host_network_container_round_trips() -> None:
    c = Container(id="c1", name="h", argv=("sh",), hostname="box", network_mode="host")
    again = Container.from_json(json.loads(json.dumps(c.to_json())))
    assert again == c and again.host_network and again.networks == ()
    assert not Container.from_json({"id": "c", "name": "n", "argv": ["x"]}).host_network


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


def test_without_a_network_a_container_joins_the_default_one() -> None:
    spec = RunSpec.from_json({"command": ["x"], "ports": ["80:80"]})
    assert spec.default_network
    assert [a.network for a in spec.attachments] == ["bridge"]
    none = RunSpec.from_json({"command": ["x"], "networks": ["none"]})
    assert none.attachments == () and not none.default_network
    named = RunSpec.from_json({"command": ["x"], "networks": ["vnet"]})
    assert not named.default_network


@pytest.mark.parametrize(
    ("given", "stored"),
    [("SIGINT", "SIGINT"), ("int", "SIGINT"), ("15", "SIGTERM"), ("QUIT", "SIGQUIT")],
)
def test_stop_signals_are_stored_by_name(given: str, stored: str) -> None:
    spec = RunSpec.from_json({"command": ["x"], "stop_signal": given, "init": True})
    assert spec.stop_signal == stored and spec.init


@pytest.mark.parametrize("given", ["SIGNOPE", "0", "999", "STOP"])
def test_bad_stop_signals_are_named(given: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid stop signal"):
        RunSpec.from_json({"command": ["x"], "stop_signal": given})


def test_restart_limits_round_trip_through_the_record() -> None:
    spec = RunSpec.from_json({"command": ["x"], "restart": "on-failure:3"})
    assert (spec.restart, spec.restart_max) == (RestartPolicy.ON_FAILURE, 3)
    assert RunSpec.from_json({"command": ["x"], "restart": "unless-stopped"}).restart is (
        RestartPolicy.UNLESS_STOPPED
    )


@pytest.mark.parametrize(
    ("text", "mappings"),
    [
        ("8080:80", ["8080:80"]),
        ("80", ["0:80"]),
        ("8000-8002:9000-9002", ["8000:9000", "8001:9001", "8002:9002"]),
        ("127.0.0.1:8000-8001:80-81/udp", ["127.0.0.1:8000:80/udp", "127.0.0.1:8001:81/udp"]),
        ("80-81", ["0:80", "0:81"]),
        ("[2001:db8::1]:8080:80", ["[2001:db8::1]:8080:80"]),
        ("127.0.0.1::80", ["127.0.0.1:0:80"]),
    ],
)
def test_port_ranges_expand_to_one_mapping_each(text: str, mappings: list[str]) -> None:
    assert expand_ports(text) == mappings


@pytest.mark.parametrize(
    ("text", "words"),
    [("8000-8002:80-81", "differ in length"), ("9-8:9-8", "bad range"), ("1-2000", "at most")],
)
def test_bad_port_ranges_are_named(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        expand_ports(text)


def test_publish_all_takes_the_exposed_ports_not_published_yet() -> None:
    spec = RunSpec.from_json(
        {"command": ["x"], "expose": ["80", "53/udp", "443"], "ports": ["8443:443"],
         "publish_all": True}
    )  # fmt: skip
    assert sorted(str(p) for p in spec.ports) == ["0:53/udp", "0:80/tcp", "8443:443/tcp"]
    with pytest.raises(InvalidArgument, match="--expose"):
        RunSpec.from_json({"command": ["x"], "expose": ["http"]})


def test_add_host_lines() -> None:
    spec = RunSpec.from_json(
        {"command": ["x"], "add_hosts": ["db:10.0.0.5", "v6=[fd00::5]", "gw:host-gateway"]}
    )
    assert spec.extra_hosts == ("db:10.0.0.5", "v6:fd00::5", "gw:host-gateway")
    for bad in ("db", "db:nope", ":10.0.0.1", "a b:10.0.0.1"):
        with pytest.raises(InvalidArgument, match="invalid --add-host"):
            RunSpec.from_json({"command": ["x"], "add_hosts": [bad]})
    text = etc.hosts("web", "web", [], [("db", "10.0.0.5")])
    assert text.endswith("10.0.0.5\tdb\n")


def test_entrypoint_takes_the_command_as_its_arguments() -> None:
    spec = RunSpec.from_json({"command": ["-c", "echo hi"], "entrypoint": "/bin/sh"})
    assert spec.argv == ("/bin/sh", "-c", "echo hi")
    assert RunSpec.from_json({"entrypoint": "/bin/true"}).argv == ("/bin/true",)


def test_auto_remove_refuses_a_restart_policy() -> None:
    assert RunSpec.from_json({"command": ["x"], "auto_remove": True}).auto_remove
    with pytest.raises(InvalidArgument, match="cannot go together"):
        RunSpec.from_json({"command": ["x"], "auto_remove": True, "restart": "always"})
