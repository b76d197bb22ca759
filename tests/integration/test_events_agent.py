"""The event stream of a real agent: `cove events` and GET /api/events see
networks, containers, checks and KV change, resume from an index, and the
UI's /v1/cove/events follows the same ACL rules as /v1."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from agentproc import COVE, AgentProc


def _events(agent: AgentProc, since: int, *filters: str) -> tuple[int, list[dict[str, object]]]:
    query = "&".join([f"since={since}", "stream=0", *(f"filter={f}" for f in filters)])
    status, body = agent.api("GET", f"/api/events?{query}")
    assert status == 200, body
    return body["index"], body["events"]


def test_events_resume_from_an_index_without_a_gap(agent: AgentProc) -> None:
    start, _ = _events(agent, 0)
    agent.ok("network", "create", "evnet", "--subnet", "10.91.0.0/24")
    status, _ = agent.api("PUT", "/v1/kv/app/color", "blue")
    assert status == 200
    index, events = _events(agent, start)
    kinds = [(e["type"], e["action"], e["name"]) for e in events]
    assert ("network", "create", "evnet") in kinds
    assert ("kv", "create", "app/color") in kinds
    net = next(e for e in events if e["type"] == "network")
    # Resuming after the network's index gives what came later, not it again.
    _, later = _events(agent, int(net["index"]))  # type: ignore[call-overload]
    assert [e["name"] for e in later if e["type"] in ("network", "kv")] == ["app/color"]
    _, only_kv = _events(agent, start, "type=kv")
    assert {e["type"] for e in only_kv} == {"kv"}
    assert index >= max(int(e["index"]) for e in events)  # type: ignore[call-overload]


def test_cove_events_streams_a_check_going_critical(agent: AgentProc, tmp_path: Path) -> None:
    reg = {"Name": "web", "ID": "web1", "Port": 80, "Check": {"CheckID": "web-ttl", "TTL": "60s"}}
    assert agent.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    out = tmp_path / "events.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [*COVE, "events", "--format", "json", "--filter", "type=check"],
            env=agent.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(1.0)  # the command is connected and following
        assert agent.api("PUT", "/v1/agent/check/fail/web-ttl?note=down", None)[0] == 200
        deadline = time.monotonic() + 5
        lines: list[dict[str, object]] = []
        while time.monotonic() < deadline and not lines:
            lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    assert lines, out.read_text()
    assert lines[0]["type"] == "check"
    assert lines[0]["attributes"]["status"] == "critical"  # type: ignore[index]
    assert lines[0]["attributes"]["service"] == "web"  # type: ignore[index]


def test_a_bad_filter_is_refused_with_the_way_out(agent: AgentProc) -> None:
    res = agent.cli("events", "--no-stream", "--filter", "type=bogus")
    assert res.returncode == 2
    assert "unknown event type 'bogus'" in res.stderr


def test_the_ui_event_stream_over_tcp_streams_ndjson(agent: AgentProc) -> None:
    url = f"http://127.0.0.1:{agent.http_port}/v1/cove/events?filter=type=kv"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert agent.api("PUT", "/v1/kv/ui/seen", "1")[0] == 200
        line = resp.readline()
    event = json.loads(line)
    assert (event["type"], event["name"]) == ("kv", "ui/seen")
    # Server-sent events resume from Last-Event-ID, as EventSource sends it.
    assert agent.api("PUT", "/v1/kv/ui/next", "2")[0] == 200
    req = urllib.request.Request(
        f"http://127.0.0.1:{agent.http_port}/v1/cove/events?filter=type=kv",
        headers={"Accept": "text/event-stream", "Last-Event-ID": str(event["index"])},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        lines = []
        while not any(x.startswith(b"data:") for x in lines):
            lines.append(resp.readline().strip())
    ids = [x for x in lines if x.startswith(b"id:")]
    data = json.loads(next(x for x in lines if x.startswith(b"data:"))[5:])
    assert data["name"] == "ui/next" and ids == [f"id: {data['index']}".encode()]
    # The native route stays off plain TCP.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{agent.http_port}/api/events", timeout=10)
        raise AssertionError("/api/events answered on plain TCP")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
