"""The web UI in a real browser: Debian's headless Chromium, driven by
Playwright, against a real agent in a test namespace (the browser is started
from the test's thread, so it runs in the agent's namespace and reaches its
loopback port). Screenshots of each view are kept under tests/artifacts/ui/.
"""

from __future__ import annotations

import base64
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentproc import AgentProc

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
LIVE = 5000  # ms a live change may take to show on a loaded machine (the goal: one second)


@pytest.fixture
def page(agent: AgentProc) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make deps installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            yield pg
            assert errors == [], errors
        finally:
            browser.close()


def _ok(agent: AgentProc, method: str, path: str, body: Any = None) -> Any:
    status, answer = agent.api(method, path, body)
    assert status == 200, (path, answer)
    return answer


def _kv_put(agent: AgentProc, key: str, value: bytes) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{agent.http_port}/v1/kv/{key}", data=value, method="PUT"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.read() == b"true"


def _until(ok: Callable[[], bool], ms: int) -> None:
    # Polled from here: the page's CSP forbids the eval wait_for_function needs.
    deadline = time.monotonic() + ms / 1000
    while not ok():
        assert time.monotonic() < deadline, "the page did not change in time"
        time.sleep(0.05)


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_ui_shows_what_exists_and_follows_changes_live(agent: AgentProc, page: Any) -> None:
    agent.ok("network", "create", "uinet", "--subnet", "10.93.0.0/24")
    sleeper = ("--", "sleep", "600")
    agent.ok("run", "-d", "--name", "web", "--network", "uinet", "-p", "18080:80", *sleeper)
    agent.ok("run", "-d", "--name", "db", "--network", "uinet", "--", "sleep", "600")
    reg = {
        "Name": "api",
        "ID": "api1",
        "Port": 9000,
        "Tags": ["v1"],
        "Meta": {"team": "blue"},
        "Check": {"CheckID": "api-ttl", "Name": "api alive", "TTL": "300s"},
    }
    _ok(agent, "PUT", "/v1/agent/service/register", reg)
    _ok(agent, "PUT", "/v1/agent/check/pass/api-ttl?note=fine")
    base = f"http://127.0.0.1:{agent.http_port}"

    # / redirects to the UI, which opens on the topology.
    page.goto(f"{base}/")
    assert page.url.startswith(f"{base}/ui/")
    page.wait_for_selector("text=Live: connected to the agent")
    page.wait_for_selector('svg [data-container="web"][data-state="running"]')
    assert page.locator('svg [data-network="uinet"]').count() == 1
    label = page.get_attribute('svg [data-container="web"]', "aria-label") or ""
    assert "10.93.0." in label and "18080" in label
    _shot(page, "topology")

    # Services: instances, tags, meta and the check's status and output.
    page.click('nav a[data-view="services"]')
    page.click('#service-list a:text-is("api")')
    page.wait_for_selector('[data-check="api-ttl"][data-status="passing"]')
    detail = page.inner_text("#service-detail")
    assert "v1" in detail and "team=blue" in detail and "fine" in detail
    # A check going critical shows without a reload.
    marker = page.evaluate("window.performance.timeOrigin")
    t0 = time.monotonic()
    _ok(agent, "PUT", "/v1/agent/check/fail/api-ttl?note=broken")
    page.wait_for_selector('[data-check="api-ttl"][data-status="critical"]', timeout=LIVE)
    live_ms = (time.monotonic() - t0) * 1000
    assert "broken" in page.inner_text("#service-detail")
    assert page.evaluate("window.performance.timeOrigin") == marker  # no reload happened
    _shot(page, "services")
    print(f"check critical shown after {live_ms:.0f} ms")
    page.fill("#svc-filter", "nomatch")
    assert page.locator("#service-list li").count() == 0
    page.fill("#svc-filter", "")

    # Containers: a container stopping shows without a reload.
    page.click('nav a[data-view="containers"]')
    page.wait_for_selector('tr[data-container="db"][data-state="running"]')
    agent.ok("stop", "-t", "1", "db")
    page.wait_for_selector('tr[data-container="db"][data-state="exited"]', timeout=LIVE)
    assert page.evaluate("window.performance.timeOrigin") == marker
    _shot(page, "containers")

    # Networks.
    page.click('nav a[data-view="networks"]')
    page.wait_for_selector('tr[data-network="uinet"]')
    assert "10.93.0.0/24" in page.inner_text('tr[data-network="uinet"]')
    _shot(page, "networks")

    # KV: browse, edit with check-and-set, refuse a stale save, delete.
    _kv_put(agent, "app/color", b"blue")
    page.goto(f"{base}/ui/#/kv/app/")
    page.click('#kv-list a:text-is("color")')
    # The prefix's view had a "Create a key" editor: wait for the key's own.
    page.wait_for_selector('form[aria-label="Edit app/color"] #kv-value')
    assert page.input_value("#kv-value") == "blue"
    page.fill("#kv-value", "green")
    page.click('button:text-is("Save")')
    page.wait_for_selector("#kv-msg:text('Saved.')")
    entry = _ok(agent, "GET", "/v1/kv/app/color")[0]
    assert base64.b64decode(entry["Value"]) == b"green"
    _until(lambda: page.input_value("#kv-value") == "green", LIVE)
    _kv_put(agent, "app/color", b"red")  # someone else writes
    _until(lambda: page.input_value("#kv-value") == "red", LIVE)
    _shot(page, "kv")
    page.click('button:text-is("Delete")')
    page.wait_for_selector('#kv-list li[data-key="app/color"]', state="detached", timeout=LIVE)
    assert agent.api("GET", "/v1/kv/app/color")[0] == 404


def test_the_ui_is_usable_by_keyboard_and_labelled(agent: AgentProc, page: Any) -> None:
    agent.ok("network", "create", "kbnet", "--subnet", "10.94.0.0/24")
    agent.ok("run", "-d", "--name", "kb", "--network", "kbnet", "--", "sleep", "600")
    base = f"http://127.0.0.1:{agent.http_port}"
    page.goto(f"{base}/ui/")
    page.wait_for_selector('svg [data-container="kb"]')
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, select')].filter((el) =>
            !el.getAttribute('aria-label') && !(el.id && document.querySelector(
              `label[for="${el.id}"]`))).map((el) => el.outerHTML)"""
    )
    assert unlabelled == []
    # Tab from the top: the skip link, then the views, reachable in order.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.view") == "services"
    page.keyboard.press("Enter")
    page.wait_for_selector("#svc-filter")
    # A container in the picture opens with the keyboard.
    page.goto(f"{base}/ui/#/topology")
    box = page.locator('svg [data-container="kb"]')
    box.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#inspect")
    assert page.url.endswith("#/containers/kb")
    # A live redraw keeps the keyboard focus where it was.
    page.focus('button[aria-label="Remove kb"]')
    drawn = page.get_attribute("#main", "data-rendered")
    agent.ok("network", "create", "kbnet2", "--subnet", "10.94.1.0/24")
    _until(lambda: page.get_attribute("#main", "data-rendered") != drawn, LIVE)
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Remove kb"
    # Actions need operator:write, which the agent grants on TCP only with
    # ACLs on: the UI says so instead of acting.
    page.click('button[aria-label="Stop kb"]')
    page.wait_for_selector("#status.denied")
    assert "Unix socket" in page.inner_text("#status")
    state = agent.api("GET", "/api/containers/kb")[1]["state"]["status"]
    assert state == "running"
    # The agent going away is said at once.
    agent.stop()
    page.wait_for_selector("#status.offline", timeout=LIVE)
    assert "unreachable" in page.inner_text("#status").lower()
    _shot(page, "offline")
