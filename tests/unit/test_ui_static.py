"""The UI's files as the agent serves them: shipped in the package, every
module they import present, sent with a strict Content-Security-Policy, and
written so that agent data never becomes markup."""

from __future__ import annotations

import asyncio
import re

from cove import ui
from cove.api import http as web
from cove.api.app import build_app
from cove.api.ui import install_static

TCP = web.Listener(web.Transport.TCP, "127.0.0.1", 8500)


def _get(path: str) -> web.Response:
    app = build_app()
    install_static(app, ui.assets())
    headers = web.Headers({"host": "127.0.0.1:8500"})
    request = web.Request("GET", path, (1, 1), headers, b"", app, None, True, TCP)  # type: ignore[arg-type]
    resp = asyncio.run(app.handle(request))
    assert isinstance(resp, web.Response)
    return resp


def test_root_and_ui_redirect_to_the_ui() -> None:
    for path in ("/", "/ui"):
        resp = _get(path)
        assert (resp.status, resp.headers["Location"]) == (301, "/ui/")


def test_pages_carry_their_type_and_a_strict_csp() -> None:
    page = _get("/ui/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe" not in csp
    script = _get("/ui/app.js")
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    assert _get("/ui/missing.js").status == 404


def test_every_module_imported_is_shipped_and_none_writes_markup() -> None:
    files = ui.assets()
    assert {"index.html", "app.js", "client.js", "topology.js", "state.js", "style.css"} <= set(
        files
    )
    for name, body in files.items():
        text = body.decode()
        for imported in re.findall(r'from "/ui/([^"]+)"', text):
            assert imported in files, f"{name} imports {imported}, which is not shipped"
        if name.endswith(".js"):
            assert "innerHTML" not in text and "eval(" not in text, name
