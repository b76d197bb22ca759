"""The H2PING check: open an HTTP/2 connection (TLS with ALPN ``h2``, or
cleartext h2c with prior knowledge) and send one PING frame; the check
passes when the server acknowledges it with the same opaque data."""

from __future__ import annotations

import asyncio
import os
import ssl

from cove.registry.grpc_health import ACK, GOAWAY, PING, PREFACE, SETTINGS, frame
from cove.registry.types import Status


async def h2_ping(target: str, *, use_tls: bool, skip_verify: bool) -> tuple[Status, str]:
    """Ping ``host:port`` over HTTP/2; (status, output)."""
    host, _, port_text = target.rpartition(":")
    host = host.strip("[]")
    ctx: ssl.SSLContext | None = None
    if use_tls:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["h2"])
        if skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.open_connection(host, int(port_text), ssl=ctx)
    except (OSError, ValueError) as exc:
        return Status.CRITICAL, f"HTTP2 ping {target}: dial failed: {exc}"
    try:
        if ctx is not None:
            tls = writer.get_extra_info("ssl_object")
            if tls is None or tls.selected_alpn_protocol() != "h2":
                return Status.CRITICAL, f"HTTP2 ping {target}: the server did not offer h2"
        opaque = os.urandom(8)
        writer.write(PREFACE + frame(SETTINGS, 0, 0) + frame(PING, 0, 0, opaque))
        await writer.drain()
        while True:
            head = await reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            payload = await reader.readexactly(length)
            if kind == SETTINGS and not flags & ACK:
                writer.write(frame(SETTINGS, ACK, 0))
            elif kind == PING and flags & ACK and payload == opaque:
                return Status.PASSING, f"HTTP2 ping {target}: success"
            elif kind == PING and not flags & ACK:
                writer.write(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                return Status.CRITICAL, f"HTTP2 ping {target}: connection closed by server (GOAWAY)"
    except (OSError, asyncio.IncompleteReadError) as exc:
        return Status.CRITICAL, f"HTTP2 ping {target}: {exc or 'connection closed'}"
    finally:
        writer.close()
