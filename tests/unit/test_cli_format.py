"""``--format`` templates, filters, ``--env-file`` and times: what the CLI
prints and takes, without an agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cove.api.networks import prune_filter
from cove.cli.containers import env_args, parse_filters, select
from cove.cli.main import main
from cove.cli.output import Template, emit
from cove.errors import InvalidArgument
from cove.model import Network
from cove.timefmt import parse_duration, parse_time, rfc3339

ITEM: dict[str, Any] = {
    "id": "ab" * 32,
    "name": "web",
    "labels": {"tier": "front", "a.b": "c"},
    "state": {"status": "running", "exit_code": None, "restart_count": 0},
    "networks": ["vnet"],
    "network_settings": {
        "ip_address": "10.89.0.2",
        "networks": {"vnet": {"ip_address": "10.89.0.2", "aliases": ["www"]}},
    },
    "endpoints": {"vnet": {"ipv4": "10.89.0.2"}},
    "ports": ["8080:80/tcp"],
    "seccomp": True,
}


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ("{{.Name}}", "web"),
        ("{{.Name}} {{.State.Status}}", "web running"),
        ("{{.ID}}", "ab" * 32),
        ("{{.State.ExitCode}}", "<nil>"),
        ("{{.State.RestartCount}}", "0"),
        ("{{.NetworkSettings.IPAddress}}", "10.89.0.2"),
        ("{{.NetworkSettings.Networks.vnet.IPAddress}}", "10.89.0.2"),
        ("{{.Endpoints.vnet.IPAddress}}", "10.89.0.2"),
        ("{{json .Labels}}", '{"tier": "front", "a.b": "c"}'),
        ('{{index .Labels "a.b"}}', "c"),
        ('{{index .Labels "nope"}}', "<no value>"),
        ("{{.Labels.nope}}", "<no value>"),
        ("{{.Labels}}", "map[a.b:c tier:front]"),
        ("{{.Ports}}", "[8080:80/tcp]"),
        ('{{join .Networks ","}}', "vnet"),
        ("{{upper .Name}}:{{len .Ports}}", "WEB:1"),
        ("{{.Seccomp}}", "true"),
        ("{{ .Name }}\\t{{.Name}}", "web\tweb"),
        ("plain", "plain"),
        ("{{.}}", "map[endpoints:map[vnet:map[ipv4:10.89.0.2]] id:" + "ab" * 32
         + " labels:map[a.b:c tier:front] name:web network_settings:map[ip_address:10.89.0.2"
         " networks:map[vnet:map[aliases:[www] ip_address:10.89.0.2]]] networks:[vnet]"
         " ports:[8080:80/tcp] seccomp:true state:map[exit_code:<nil> restart_count:0"
         " status:running]]"),
    ],
)  # fmt: skip
def test_templates_render_field_paths(fmt: str, out: str) -> None:
    assert Template(fmt).render(ITEM) == out


@pytest.mark.parametrize(
    ("fmt", "words"),
    [
        ("{{.Nope}}", "no field 'Nope'; fields: Endpoints, Id, Labels"),
        ("{{.Name", "unbalanced"),
        ("{{}}", "empty"),
        ("{{exec .Name}}", "unknown function 'exec'"),
        ("{{.Name .State}}", "takes no arguments"),
        ("{{index .Labels}}", "index needs"),
        ("{{.Name..X}}", "empty field name"),
        ('{{print "a}}', "quotes"),
    ],
)
def test_bad_templates_are_named(fmt: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        Template(fmt).render(ITEM)


def test_emit_json_is_always_a_list_and_table_templates_align(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emit([ITEM], "json", lambda _: None)
    assert json.loads(capsys.readouterr().out) == [ITEM]
    emit([ITEM, {**ITEM, "name": "longer-name"}], "table {{.Name}}\\t{{.State.Status}}", print)
    assert capsys.readouterr().out.splitlines() == [
        "NAME         STATUS",
        "web          running",
        "longer-name  running",
    ]


def test_ps_filters() -> None:
    other = {**ITEM, "id": "cd" * 32, "name": "db", "labels": {"tier": "back"},
             "state": {"status": "exited"}, "endpoints": {}, "networks": []}  # fmt: skip
    items = [ITEM, other]

    def names(*f: str) -> list[str]:
        return [c["name"] for c in select(items, parse_filters(list(f)))]

    assert names() == ["web", "db"]
    assert names("name=we") == ["web"]
    assert names("label=tier") == ["web", "db"]
    assert names("label=tier=back") == ["db"]
    assert names("status=exited") == ["db"]
    assert names("status=exited", "status=running") == ["web", "db"]
    assert names("network=vnet") == ["web"]
    assert names("id=cdcd") == ["db"]
    assert names("name=web", "status=exited") == []
    with pytest.raises(InvalidArgument, match="invalid filter 'colour=red': use id=, name="):
        parse_filters(["colour=red"])


def test_env_file_and_bare_keys(tmp_path: Path) -> None:
    f = tmp_path / "env"
    f.write_text("# comment\nA=1\n\nB\nC=x=y\nUNSET\n")
    environ = {"B": "from-host", "K": "k"}
    got = env_args([str(f)], ["K", "D=4", "MISSING"], environ)
    assert got == ["A=1", "B=from-host", "C=x=y", "K=k", "D=4"]
    f.write_text("BAD KEY=1\n")
    with pytest.raises(InvalidArgument, match="line 1"):
        env_args([str(f)], [], {})
    with pytest.raises(InvalidArgument, match="cannot read --env-file"):
        env_args([str(tmp_path / "absent")], [], {})


def test_times() -> None:
    assert rfc3339(1700000000.5) == "2023-11-14T22:13:20.500000Z"
    assert rfc3339(0) == "0001-01-01T00:00:00Z"
    assert parse_duration("1h30m") == 5400 and parse_duration("1.5s") == 1.5
    assert parse_duration("5") is None and parse_duration("m") is None
    assert parse_time("10m", 1000.0) == 400.0
    assert parse_time("2023-11-14T22:13:20.5Z", 0) == 1700000000.5
    assert parse_time("1700000000", 0) == 1700000000.0
    with pytest.raises(InvalidArgument, match="duration"):
        parse_time("yesterday", 0)


def _net(name: str, created: float, **labels: str) -> Network:
    return Network(id=name, name=name, subnets=(), bridge="b", labels=labels, created=created)


def test_network_prune_filters() -> None:
    nets = [_net("a", 100, env="dev"), _net("b", 900, env="prod"), _net("c", 950)]

    def pruned(*f: str) -> list[str]:
        keep = prune_filter(list(f), now=1000.0)
        return [n.name for n in nets if not keep(n)]

    assert pruned() == ["a", "b", "c"]
    assert pruned("label=env") == ["a", "b"]
    assert pruned("label=env=prod") == ["b"]
    assert pruned("label!=env") == ["c"]
    assert pruned("until=60s") == ["a", "b"]
    assert pruned("until=60s", "label=env=dev") == ["a"]
    with pytest.raises(InvalidArgument, match="invalid filter 'dangling=true'"):
        prune_filter(["dangling=true"], 0)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["logs", "--details", "web"], "unknown flag --details for 'cove logs'"),
        (["network", "prune", "--all"], "unknown flag --all for 'cove network prune'"),
        (["run", "--bogus=1", "--", "true"], "unknown flag --bogus for 'cove run'"),
        (["ps", "extra"], "unexpected argument(s) extra for 'cove ps'"),
    ],
)
def test_an_unknown_flag_is_named(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--socket", "/nonexistent", *argv])
    assert exc.value.code == 2
    assert words in capsys.readouterr().err
