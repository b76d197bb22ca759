"""The H2PING check: open an HTTP/2 connection (TLS with ALPN ``h2``, or
cleartext h2c with prior knowledge) and send one PING frame; the check
passes when the server acknowledges it with the same opaque data."""

from __future__ import annotations

import asyncio
import os

from cove.registry.grpc_health import ACK, GOAWAY, PING, PREFACE, SETTINGS, dial_h2, frame
from cove.registry.types import Status


async def h2_ping(target: str, *, use_tls: bool, skip_verify: bool) -> tuple[Status, str]:
    """Ping ``host:port`` over HTTP/2; (status, output)."""
    try:
        reader, writer = await dial_h2(target, use_tls=use_tls, skip_verify=skip_verify)
    except (OSError, ValueError) as exc:
        return Status.CRITICAL, f"HTTP2 ping {target}: dial failed: {exc}"
    try:
        if use_tls:
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
