"""Health probes (HTTP, TCP, UDP, gRPC, H2PING, script) and the status bookkeeping that
turns their results into a check's status.

``Tracker`` is pure: Consul's SuccessBeforePassing / FailuresBeforeCritical
counting. The probes are small async functions returning (status, output).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from cove.registry.checks import (
    CheckDefinition,
    GrpcProbe,
    H2PingProbe,
    HttpProbe,
    ScriptArgs,
    TcpProbe,
    UdpProbe,
)
from cove.registry.grpc_health import grpc_health_check
from cove.registry.h2ping import h2_ping
from cove.registry.types import OUTPUT_LIMIT, Status

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Tracker:
    """Consul's status handler: a result only changes the status after
    enough of the same kind in a row. Counters live with the agent (as in
    Consul), not in the store."""

    status: Status
    success_before_passing: int = 0
    failures_before_critical: int = 0
    successes: int = 0
    failures: int = 0

    def observe(self, result: Status) -> Status:
        """Record one probe result; returns the status to publish."""
        if result is Status.PASSING:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_before_passing:
                self.status = Status.PASSING
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.failures_before_critical:
                self.status = result
        return self.status


def cut(output: str) -> str:
    """Outputs are capped at 4 KiB, as Consul caps them."""
    data = output.encode()
    if len(data) <= OUTPUT_LIMIT:
        return output
    return data[:OUTPUT_LIMIT].decode(errors="ignore")


async def probe(
    check: CheckDefinition, session: aiohttp.ClientSession | None = None
) -> tuple[Status, str]:
    """Run one probe of ``check`` within its timeout."""
    spec = check.spec
    try:
        if isinstance(spec, HttpProbe):
            return await asyncio.wait_for(_http(spec, session), check.timeout)
        if isinstance(spec, TcpProbe):
            return await asyncio.wait_for(_tcp(spec.address), check.timeout)
        if isinstance(spec, GrpcProbe):
            return await asyncio.wait_for(
                grpc_health_check(
                    spec.target, use_tls=spec.use_tls, skip_verify=spec.tls_skip_verify
                ),
                check.timeout,
            )
        if isinstance(spec, UdpProbe):
            return await _udp(spec.address, check.timeout)
        if isinstance(spec, H2PingProbe):
            return await asyncio.wait_for(
                h2_ping(spec.address, use_tls=spec.use_tls, skip_verify=spec.tls_skip_verify),
                check.timeout,
            )
        if isinstance(spec, ScriptArgs):
            return await _script(spec, check.timeout)
    except TimeoutError:
        return Status.CRITICAL, f"{check.kind.value} check timed out after {check.timeout:g}s"
    return Status.CRITICAL, f"cove cannot probe {check.kind.value!r} checks"


async def _http(check: HttpProbe, session: aiohttp.ClientSession | None) -> tuple[Status, str]:
    own = session is None
    client = session or aiohttp.ClientSession()
    headers: list[tuple[str, str]] = [(k, v) for k, vs in check.header.items() for v in vs]
    if not any(k.lower() == "user-agent" for k, _ in headers):
        headers.append(("User-Agent", "Consul Health Check"))
    headers.append(("Accept", "text/plain, text/*, */*"))
    ssl_ctx: ssl.SSLContext | bool = True
    if check.tls_skip_verify:
        ssl_ctx = False
    try:
        async with client.request(
            check.method,
            check.url,
            headers=headers,
            data=check.body.encode() if check.body else None,
            ssl=ssl_ctx,
            allow_redirects=False,
        ) as resp:
            body = await resp.content.read(OUTPUT_LIMIT)
            text = body.decode(errors="replace")
            output = f"HTTP {check.method} {check.url}: {resp.status} {resp.reason} Output: {text}"
            if 200 <= resp.status < 300:
                return Status.PASSING, cut(output)
            if resp.status == 429:
                return Status.WARNING, cut(output)
            return Status.CRITICAL, cut(output)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Status.CRITICAL, cut(f"Get {check.url!r}: {exc}")
    finally:
        if own:
            await client.close()


async def _tcp(target: str) -> tuple[Status, str]:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except (OSError, ValueError) as exc:
        return Status.CRITICAL, f"dial tcp {target}: {exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Status.PASSING, f"TCP connect {target}: Success"


class _UdpReply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not self.answer.done():
            self.answer.set_result("")

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_result(str(exc))


UDP_PAYLOAD = b"cove health check\n"


async def _udp(target: str, timeout: float) -> tuple[Status, str]:
    """Consul's UDP check: send one datagram; any reply, or silence for the
    whole timeout, passes; an ICMP error (port unreachable) is critical."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _UdpReply, remote_addr=(host, int(port))
        )
    except (OSError, ValueError) as exc:
        return Status.CRITICAL, f"dial udp {target}: {exc}"
    try:
        transport.sendto(UDP_PAYLOAD)
        try:
            error = await asyncio.wait_for(asyncio.shield(proto.answer), timeout)
        except TimeoutError:
            error = ""
    finally:
        transport.close()
    if error:
        return Status.CRITICAL, f"UDP {target}: {error}"
    return Status.PASSING, f"UDP connect {target}: Success"


async def _script(check: ScriptArgs, timeout: float) -> tuple[Status, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *check.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return Status.CRITICAL, f"cannot run {check.args[0]!r}: {exc}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Status.CRITICAL, f"Timed out ({timeout:g}s) running check"
    text = cut(out.decode(errors="replace"))
    if proc.returncode == 0:
        return Status.PASSING, text
    if proc.returncode == 1:
        return Status.WARNING, text
    return Status.CRITICAL, text
