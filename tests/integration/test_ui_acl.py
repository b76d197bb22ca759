"""The UI's routes follow the ACL system, never around it: with ACLs on
(default deny), /v1/cove needs operator:read to look and operator:write to
act, the event stream shows each token only what /v1 would, and a token
typed into the UI in a real browser is what opens the views."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentproc import AgentProc
from conftest import cleanup_agent

MGMT = "3c1f9a52-ui-mgmt-secret"


@pytest.fixture
def acl_agent(hostns: str, tmp_path: Path) -> Iterator[AgentProc]:
    proc = AgentProc(
        hostns, tmp_path, "--acl-enabled", "--acl-default-policy", "deny",
        "--acl-initial-management", MGMT,
    )  # fmt: skip
    proc.start()
    try:
        yield proc
    finally:
        cleanup_agent(proc)


def _call(
    agent: AgentProc,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if token:
        hdrs["X-Consul-Token"] = token
    req = urllib.request.Request(
        f"http://127.0.0.1:{agent.http_port}{path}", data=data, method=method, headers=hdrs
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def _token(agent: AgentProc, name: str, rules: str) -> str:
    status, _ = _call(agent, "PUT", "/v1/acl/policy", MGMT, {"Name": name, "Rules": rules})
    assert status == 200
    status, tok = _call(agent, "PUT", "/v1/acl/token", MGMT, {"Policies": [{"Name": name}]})
    assert status == 200
    return str(tok["SecretID"])


def test_the_ui_routes_need_operator_rights(acl_agent: AgentProc) -> None:
    agent = acl_agent
    agent.ok("network", "create", "aclnet", "--subnet", "10.97.128.0/24")
    agent.ok("run", "-d", "--name", "guarded", "--network", "aclnet", "--", "sleep", "600")
    reader = _token(agent, "ui-read", 'operator = "read"\nkey_prefix "pub/" { policy = "read" }')
    writer = _token(agent, "ui-write", 'operator = "write"')

    status, body = _call(agent, "GET", "/v1/cove/topology")
    assert status == 403 and "operator:read" in body["error"]
    status, body = _call(agent, "GET", "/v1/cove/topology", reader)
    assert status == 200 and [n["name"] for n in body["networks"]] == ["aclnet"]
    shown = body["containers"][0]
    assert shown["name"] == "guarded" and "env" not in shown and "log_path" not in shown

    assert _call(agent, "GET", "/v1/cove/containers/guarded/logs", reader)[0] == 200
    status, body = _call(agent, "POST", "/v1/cove/containers/guarded/stop", reader)
    assert status == 403 and "operator:write" in body["error"]
    assert agent.api("GET", "/api/containers/guarded")[1]["state"]["status"] == "running"
    status, body = _call(agent, "POST", "/v1/cove/containers/guarded/start", writer)
    assert status == 200 and body["name"] == "guarded"

    # The event stream shows a token only the keys it may read.
    start = int(_call(agent, "GET", "/v1/cove/events?stream=0", reader)[1]["index"])
    for key in ("pub/a", "secret/b"):
        assert _call(agent, "PUT", f"/v1/kv/{key}", MGMT, b"v")[0] == 200
    status, body = _call(agent, "GET", f"/v1/cove/events?stream=0&since={start}", reader)
    assert status == 200
    assert [e["name"] for e in body["events"] if e["type"] == "kv"] == ["pub/a"]
    assert _call(agent, "GET", "/v1/cove/events?stream=0")[0] == 403

    # A stream ends when its token is deleted: nothing more reaches it.
    req = urllib.request.Request(
        f"http://127.0.0.1:{agent.http_port}/v1/cove/events?filter=type=kv",
        headers={"X-Consul-Token": reader},
    )
    with urllib.request.urlopen(req, timeout=20) as stream:
        status, me = _call(agent, "GET", "/v1/acl/token/self", reader)
        assert status == 200
        status, _ = _call(agent, "DELETE", f"/v1/acl/token/{me['AccessorID']}", MGMT)
        assert status == 200
        assert _call(agent, "PUT", "/v1/kv/pub/after", MGMT, b"v")[0] == 200
        assert stream.readline() == b""  # the end of the stream, without the change

    # The pages themselves are served only to a Host that names the agent.
    assert _call(agent, "GET", "/ui/", headers={"Host": "evil.example"})[0] == 421
    status, page = _call(agent, "GET", "/ui/")
    assert status == 200 and "<title>cove</title>" in page


def test_a_token_typed_into_the_ui_opens_the_views(acl_agent: AgentProc) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make deps installs it)")
    agent = acl_agent
    agent.ok("network", "create", "tokennet", "--subnet", "10.97.129.0/24")
    reader = _token(agent, "ui-read", 'operator = "read"')
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{agent.http_port}/ui/")
            page.wait_for_selector("#main [role=alert]:has-text('Permission denied')")
            assert page.locator("svg [data-network]").count() == 0
            page.fill("#token", reader)
            page.press("#token", "Enter")
            page.wait_for_selector('svg [data-network="tokennet"]')
            page.wait_for_selector("text=Live: connected to the agent")
            # Kept for this tab only.
            assert page.evaluate("sessionStorage.getItem('cove-token')") == reader
            assert page.evaluate("localStorage.length") == 0
            # A token without operator rights still gets live services,
            # through blocking queries.
            viewer = _token(
                agent, "svc-read", 'service_prefix "" { policy = "read" }\n'
                'node_prefix "" { policy = "read" }',
            )  # fmt: skip
            reg = {
                "Name": "pay",
                "ID": "pay1",
                "Port": 80,
                "Check": {"CheckID": "pay-ttl", "TTL": "60s"},
            }
            assert _call(agent, "PUT", "/v1/agent/service/register", MGMT, reg)[0] == 200
            assert _call(agent, "PUT", "/v1/agent/check/pass/pay-ttl", MGMT)[0] == 200
            page.goto(f"http://127.0.0.1:{agent.http_port}/ui/#/services/pay")
            page.fill("#token", viewer)
            page.press("#token", "Enter")
            page.wait_for_selector('[data-check="pay-ttl"][data-status="passing"]')
            page.wait_for_selector("#status.denied")
            assert _call(agent, "PUT", "/v1/agent/check/fail/pay-ttl", MGMT)[0] == 200
            page.wait_for_selector('[data-check="pay-ttl"][data-status="critical"]', timeout=3000)
        finally:
            browser.close()
