"""The event stream over HTTP: ``GET /api/events`` (native, for the CLI on
the Unix socket) and ``GET /v1/cove/events`` (the UI's, each change
filtered by the caller's ACL token; see ``api/ui.py``).

Query: ``since=N`` (changes after store index N; default: only what comes
next), ``filter=key=value`` (repeatable; Docker's semantics, see
``events.change.Filter``), ``stream=0`` (answer the changes so far as one
JSON document instead of following), ``format=sse`` (or ``Accept:
text/event-stream``: server-sent events, each with ``id:`` = its index, so a
browser's ``EventSource`` resumes by itself) and the default newline-
delimited JSON, one change a line. A blank line (NDJSON) or a comment (SSE)
is sent every ``heartbeat`` seconds of silence, so a dead peer is noticed
and proxies keep the stream open. A ``reset`` change means the history
asked for is gone: re-read the state and resume from its index.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from cove.api import http as web
from cove.errors import InvalidArgument, PermissionDenied
from cove.events.change import Change, Filter, Kind
from cove.events.log import EventLog

HEARTBEAT = 15.0

Visible = Callable[[Change], bool]


_CURRENT_WAIT = 2.0  # seconds a one-shot read waits for the watch to catch up


def parse_since(request: web.Request, head: int) -> int:
    raw = request.query.get("since") or request.headers.get("last-event-id")
    if raw is None or raw == "":
        return head
    try:
        since = int(raw)
    except ValueError:
        raise InvalidArgument(
            f"since={raw[:40]!r} is not an index: pass a whole number, the index of "
            "the last event seen (or 0 for all the history the agent keeps)"
        ) from None
    if since < 0:
        raise InvalidArgument("since must be 0 or more")
    return since


def parse_filter(request: web.Request) -> Filter:
    try:
        return Filter.parse(request.query.getall("filter", []))
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def wants_sse(request: web.Request) -> bool:
    fmt = request.query.get("format", "")
    if fmt not in ("", "json", "ndjson", "sse"):
        raise InvalidArgument(f"format={fmt[:20]!r}: expected ndjson (the default) or sse")
    return fmt == "sse" or "text/event-stream" in request.headers.get("accept", "")


async def _changes_after(events: EventLog, since: int) -> list[Change]:
    if events.needs_store(since):
        return await asyncio.to_thread(events.after, since)
    return events.after(since)


Authorize = Callable[[], Awaitable[Visible | None]]
"""Asked before each batch a stream sends: which changes the caller may see
now, or None when it may no longer follow the stream (its token was
deleted or lost the right): the stream ends."""


async def serve(
    request: web.Request, events: EventLog, authorize: Authorize | None = None
) -> web.StreamResponse:
    """Answer one events request (see the module docstring); ``authorize``
    decides, batch by batch, which changes the caller may see."""
    head = events.head
    since = parse_since(request, head)
    keep = parse_filter(request)
    sse = wants_sse(request)

    visible: Visible | None = None
    if authorize is not None:
        visible = await authorize()
        if visible is None:
            raise PermissionDenied("Permission denied: the token may not follow the event stream")

    def wanted(change: Change) -> bool:
        return keep(change) and (visible is None or visible(change))

    if request.query.get("stream", "1") in ("0", "false", "no"):
        # A one-shot read answers every change committed before it, even one
        # the watch is still delivering (a write just acknowledged).
        await asyncio.to_thread(events.wait_current, _CURRENT_WAIT)
        head = events.head
        changes = await _changes_after(events, since)
        index = max([head, since] + [c.index for c in changes])
        if changes and changes[-1].kind is Kind.RESET:
            index = changes[-1].index
        return web.json_response(
            {
                "index": index,
                "events": [c.to_json() for c in changes if wanted(c)],
            }
        )
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream" if sse else "application/x-ndjson",
            "Cache-Control": "no-cache",
            "X-Consul-Index": str(head),
        }
    )
    wake = asyncio.Event()
    handle = events.add_waker(asyncio.get_running_loop(), wake)
    try:
        await resp.prepare(request)
        if sse:
            await resp.write(b"retry: 1000\n\n")
        reclaimed = request.reclaimed()
        cursor = since
        while True:
            wake.clear()
            changes = await _changes_after(events, cursor)
            if changes and authorize is not None:
                visible = await authorize()
                if visible is None:
                    break
            out = []
            for change in changes:
                # A reset names where to go on from, even backwards.
                cursor = change.index if change.kind is Kind.RESET else max(cursor, change.index)
                if wanted(change):
                    body = json.dumps(change.to_json(), separators=(",", ":"))
                    out.append(f"id: {change.index}\ndata: {body}\n\n" if sse else body + "\n")
            if out:
                await resp.write("".join(out).encode())
            if reclaimed.done():
                break
            waiter: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
            pending: set[asyncio.Future[Any]] = {waiter, reclaimed}
            done, _ = await asyncio.wait(
                pending, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED
            )
            if not waiter.done():
                waiter.cancel()
            if not done:
                await resp.write(b": keep-alive\n\n" if sse else b"\n")
            elif reclaimed in done:
                break
    finally:
        events.remove_waker(handle)
    await resp.write_eof()
    return resp


def install(app: web.Application, events: EventLog) -> None:
    """The native route: the Unix socket's (or HTTPS with an operator
    token, as the guard decides for every ``/api`` path)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve(request, events)

    app.router.add_get("/api/events", handler)
