"""A minimal gRPC health client (grpc.health.v1.Health/Check) over HTTP/2,
written out because grpcio is not a dependency.

Only what one unary call needs: the connection preface, SETTINGS (and their
ACK), one HEADERS + DATA request on stream 1, PING replies, and reading DATA
until the stream ends. Response headers are never decoded: the verdict comes
from the HealthCheckResponse message itself (status 1 = SERVING); a
trailers-only answer (an error such as NOT_FOUND) carries no message and so
counts as critical, which is what Consul reports for it.
"""

from __future__ import annotations

import asyncio
import ssl
import struct

from cove.registry.types import Status

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
SERVING = 1
_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream & 0x7FFFFFFF)
        + payload
    )


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(text: str) -> bytes:
    data = text.encode()
    return hpack_int(len(data), 7) + data


def request_headers(authority: str, path: str, tls: bool) -> bytes:
    """HPACK for the call's headers: static-table entries where they exist,
    literals without indexing (and without Huffman) elsewhere."""
    out = bytearray()
    out += b"\x83"  # :method POST
    out += b"\x87" if tls else b"\x86"  # :scheme https / http
    out += hpack_int(4, 4) + hpack_str(path)  # :path, indexed name
    out += hpack_int(1, 4) + hpack_str(authority)  # :authority, indexed name
    for name, value in (("content-type", "application/grpc"), ("te", "trailers")):
        out += b"\x00" + hpack_str(name) + hpack_str(value)
    return bytes(out)


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service} framed as one uncompressed gRPC message."""
    body = b""
    if service:
        raw = service.encode()
        body = b"\x0a" + _varint(len(raw)) + raw
    return b"\x00" + struct.pack(">I", len(body)) + body


def decode_status(data: bytes) -> int | None:
    """The status field of a framed HealthCheckResponse; None when there is
    no complete message."""
    if len(data) < 5:
        return None
    length = struct.unpack(">I", data[1:5])[0]
    msg = data[5 : 5 + length]
    if len(msg) < length:
        return None
    i = 0
    status = 0  # proto3 default: UNKNOWN is not sent
    while i < len(msg):
        key, i = _read_varint(msg, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(msg, i)
            if field == 1:
                status = value
        elif wire == 2:
            size, i = _read_varint(msg, i)
            i += size
        else:
            return None
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while i < len(data):
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
    raise ValueError("truncated varint")


async def dial_h2(
    address: str, *, use_tls: bool, skip_verify: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port`` for HTTP/2: TLS offering ALPN ``h2`` (the
    certificate checked unless ``skip_verify``), or cleartext h2c."""
    host, _, port_text = address.rpartition(":")
    ctx: ssl.SSLContext | None = None
    if use_tls:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["h2"])
        if skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    return await asyncio.open_connection(host.strip("[]"), int(port_text), ssl=ctx)


async def grpc_health_check(
    target: str, *, use_tls: bool = False, skip_verify: bool = False
) -> tuple[Status, str]:
    """Ask ``host:port[/service]`` for its health; (status, output)."""
    address, _, service = target.partition("/")
    try:
        reader, writer = await dial_h2(address, use_tls=use_tls, skip_verify=skip_verify)
    except (OSError, ValueError) as exc:
        return Status.CRITICAL, f"gRPC {target}: dial failed: {exc}"
    try:
        writer.write(
            PREFACE
            + frame(SETTINGS, 0, 0)
            + frame(
                HEADERS,
                END_HEADERS,
                1,
                request_headers(address, "/grpc.health.v1.Health/Check", use_tls),
            )
            + frame(DATA, END_STREAM, 1, encode_request(service))
        )
        await writer.drain()
        data = bytearray()
        while True:
            head = await reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = await reader.readexactly(length)
            if kind == SETTINGS and not flags & ACK:
                writer.write(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                writer.write(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                return Status.CRITICAL, f"gRPC {target}: connection closed by server (GOAWAY)"
            elif stream == 1 and kind == RST_STREAM:
                return Status.CRITICAL, f"gRPC {target}: stream reset by server"
            elif stream == 1 and kind == DATA:
                if flags & PADDED and payload:
                    payload = payload[1 : len(payload) - payload[0]]
                data += payload
            if stream == 1 and kind in (DATA, HEADERS) and flags & END_STREAM:
                break
    except (OSError, asyncio.IncompleteReadError) as exc:
        return Status.CRITICAL, f"gRPC {target}: {exc or 'connection closed'}"
    finally:
        writer.close()
    status = decode_status(bytes(data))
    if status is None:
        return Status.CRITICAL, f"gRPC {target}: the server answered with an error, no status"
    name = _STATUS_NAMES.get(status, str(status))
    if status == SERVING:
        return Status.PASSING, f"gRPC check {target}: success"
    return Status.CRITICAL, f"gRPC check {target}: failed with status {name}"
