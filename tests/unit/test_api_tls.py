"""HTTPS certificates: clear errors for bad files, and a reload that swaps
the served certificate for new handshakes or keeps the old one."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from cove.api.tls import ReloadingTls, TlsFiles, server_context
from cove.errors import InvalidArgument

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _self_signed(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _served_cn(port: int, ca: Path) -> str:
    async def go() -> str:
        ctx = ssl.create_default_context(cafile=str(ca))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        cert = writer.get_extra_info("peercert")
        writer.close()
        return str(dict(i for rdn in cert["subject"] for i in rdn)["commonName"])

    return asyncio.run(go())


def test_bad_files_are_named(tmp_path: Path) -> None:
    a_cert, a_key = _self_signed(tmp_path, "a")
    _, b_key = _self_signed(tmp_path, "b")
    with pytest.raises(InvalidArgument, match="does not exist: check --tls-cert"):
        server_context(TlsFiles(tmp_path / "none.pem", a_key))
    with pytest.raises(InvalidArgument, match="does not match certificate"):
        server_context(TlsFiles(a_cert, b_key))
    with pytest.raises(InvalidArgument, match="expected PEM files"):
        server_context(TlsFiles(a_cert, a_cert))
    with pytest.raises(InvalidArgument, match="not a readable file: check --tls-key"):
        server_context(TlsFiles(a_cert, tmp_path))
    with pytest.raises(InvalidArgument, match="needs --tls-ca"):
        server_context(TlsFiles(a_cert, a_key, verify_incoming=True))


def test_reload_swaps_the_certificate_or_keeps_the_old_one(tmp_path: Path) -> None:
    a_cert, a_key = _self_signed(tmp_path, "a")
    b_cert, b_key = _self_signed(tmp_path, "b")
    live_cert, live_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(a_cert, live_cert)
    shutil.copy(a_key, live_key)
    tls = ReloadingTls(TlsFiles(live_cert, live_key))

    async def serve() -> tuple[asyncio.Server, int]:
        server = await asyncio.start_server(
            lambda _r, w: w.close(), "127.0.0.1", 0, ssl=tls.context
        )
        return server, server.sockets[0].getsockname()[1]

    loop = asyncio.new_event_loop()
    server, port = loop.run_until_complete(serve())
    thread_loop = threading.Thread(target=loop.run_forever, daemon=True)
    thread_loop.start()
    try:
        assert _served_cn(port, a_cert) == "a"
        shutil.copy(b_cert, live_cert)
        shutil.copy(b_key, live_key)
        assert tls.reload()
        assert _served_cn(port, b_cert) == "b"
        live_cert.write_text("garbage\n")
        assert not tls.reload()
        assert _served_cn(port, b_cert) == "b"
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread_loop.join(5)
        loop.close()
