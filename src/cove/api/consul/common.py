"""What every Consul endpoint shares: errors as Consul sends them (plain
text and its status codes), the query options (?dc, ?token, ?index, ?wait,
?filter), the index headers, and running blocking reads."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cove.acl import ALLOW_ALL, AclService, Authorizer
from cove.api import http as web
from cove.api.metrics import Sample, Series
from cove.codec import dumps, loads
from cove.errors import CoveError, InvalidArgument
from cove.registry import Registry
from cove.registry.blocking import Interests, blocking_read, parse_index, parse_wait
from cove.registry.filter import Predicate, compile_filter, select
from cove.registry.filter_schema import Shape
from cove.registry.kv import TooLarge, TxnAborted
from cove.registry.queries import Answer
from cove.registry.runner import CheckRunner
from cove.store.group import GroupCommit
from cove.store.hub import WatchHub

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Consul:
    """The per-app state of the Consul API (kept in ``app[CONSUL]``)."""

    registry: Registry
    runner: CheckRunner | None
    inline: bool = False
    interests: Interests | None = None
    # The watch that feeds ``interests``: a read it has not caught up with
    # waits for it (see ``blocking``).
    hub: WatchHub | None = None
    commits: GroupCommit | None = None  # group commit of inline writes
    acl: AclService | None = None  # None: ACLs off, every token ignored
    # The agent's own gauges (name, help, value) for /v1/agent/metrics.
    samples: Callable[[], Iterable[Sample | Series]] | None = None
    # /v1/agent/reload and /leave: what the agent does for them (None:
    # refused, this server cannot).
    reload: Callable[[], Awaitable[None]] | None = None
    leave: Callable[[], Awaitable[None]] | None = None
    # /v1/agent/force-leave?prune: remove a dead node and all it owned (as
    # `cove members rm`); None: prune only deregisters it from the catalog.
    prune: Callable[[str], Awaitable[None]] | None = None


CONSUL: web.AppKey[Consul] = web.AppKey("cove_consul", Consul)


def ctx(request: web.Request) -> Consul:
    return request.app[CONSUL]


def consul_errors(handler: Handler) -> Handler:
    """Answer a ``CoveError`` as Consul does: its status, a text body."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except TxnAborted as exc:
            errors = [{"OpIndex": i, "What": what} for i, what in exc.errors]
            return web.json_response({"Results": None, "Errors": errors}, status=409)
        except TooLarge as exc:
            return web.Response(status=413, text=exc.message)
        except CoveError as exc:
            if exc.http_status >= 500:
                log.error("%s %s failed: %s", request.method, request.path, exc.message)
            return web.Response(status=exc.http_status, text=exc.message)

    return wrapped


@dataclass(frozen=True, slots=True)
class QueryOptions:
    token: str
    index: int
    wait: float
    filter: str | None
    predicate: Predicate | None = None


def options(request: web.Request, schema: Shape | None = None) -> QueryOptions:
    """Parse the options every endpoint accepts. ?dc of another datacenter
    fails as in Consul (500 "No path to datacenter"). ``?filter`` is compiled
    here, against the answer's ``schema``, so a bad one is a 400 before any
    blocking wait."""
    dc = request.query.get("dc")
    if dc and dc != ctx(request).registry.datacenter:
        raise CoveError("No path to datacenter")
    text = request.query.get("filter")
    return QueryOptions(
        token=request_token(request),
        index=parse_index(request.query.get("index")),
        wait=parse_wait(request.query.get("wait")),
        filter=text,
        predicate=compile_filter(text, schema) if text else None,
    )


def request_token(request: web.Request) -> str:
    """The request's ACL token (a SecretID) as Consul reads it: the
    ``X-Consul-Token`` header, else ``Authorization: Bearer``, else
    ``?token=``; empty when there is none."""
    token = request.headers.get("X-Consul-Token", "")
    if not token:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    return token or request.query.get("token", "")


def flag(request: web.Request, name: str) -> bool:
    """A Consul boolean query flag: present and not false."""
    if name not in request.query:
        return False
    value = request.query[name].lower()
    if value in ("", "1", "true", "t", "yes"):
        return True
    if value in ("0", "false", "f", "no"):
        return False
    raise InvalidArgument(f"Invalid value for ?{name}: {value!r}")


def meta_headers(index: int) -> dict[str, str]:
    return {
        "X-Consul-Index": str(max(index, 1)),
        "X-Consul-KnownLeader": "true",
        "X-Consul-LastContact": "0",
        "X-Consul-Effective-Consistency": "leader",
    }


def reply(data: Any, index: int | None = None, status: int = 200) -> web.Response:
    headers = meta_headers(index) if index is not None else {}
    return web.Response(
        body=dumps(data), status=status, headers=headers, content_type="application/json"
    )


async def run(request: web.Request, func: Callable[..., Any], *args: Any) -> Any:
    """Call the (synchronous) registry: inline when the store lives in this
    process (a thread hop would cost more than the call), else on a thread
    so a remote store's latency never stalls the event loop."""
    if ctx(request).inline:
        return func(*args)
    return await asyncio.to_thread(func, *args)


async def write(request: web.Request, func: Callable[..., Any], *args: Any) -> Any:
    """Call a (synchronous) registry write. With an in-process store the
    writes of concurrent requests are group-committed (one SQLite
    transaction for all of them, each request answered after it commits);
    otherwise as ``run``."""
    commits = ctx(request).commits
    if commits is not None:
        return await commits.call(func, *args)
    return await run(request, func, *args)


_CATCH_UP = 1.0  # seconds a read waits at most for the watch (then answers anyway)


async def blocking(
    request: web.Request,
    opts: QueryOptions,
    read: Callable[[], Answer],
    hint: Sequence[str] = (),
) -> Answer:
    interests = ctx(request).interests
    if interests is None:  # no event loop state yet (should not happen)
        plain: Answer = await run(request, read)
        return plain

    hub = ctx(request).hub

    async def once() -> Answer:
        answer: Answer = await run(request, read)
        if hub is not None and hub.behind(answer.revision):
            # The index of what is missing comes from the watch (a delete
            # leaves no key to date it): on etcd the watch runs a few
            # milliseconds behind a write this client may just have made,
            # and the index must not go back in time. On the agent the hub
            # waits only for the agent's own writes.
            await run(request, hub.wait_for, answer.revision, _CATCH_UP)
        return answer

    # Only a query that may wait claims its connection's reclaim signal.
    reclaimed = request.reclaimed() if opts.index else None
    return await blocking_read(
        interests, once, opts.index, opts.wait, prefixes_hint=hint, reclaimed=reclaimed
    )


def answer_reply(
    answer: Answer, opts: QueryOptions, *, not_found_empty: bool = False, acl_filtered: bool = False
) -> web.Response:
    """The answer as Consul sends it: 404 (with the index) when nothing was
    found unless an empty answer is a normal one, else the filtered data.
    ``acl_filtered`` says that ACLs removed something from it."""
    if not answer.found and not not_found_empty:
        return web.Response(status=404, headers=meta_headers(answer.index))
    if answer.raw is not None and not opts.filter:
        return web.Response(
            body=answer.raw, headers=meta_headers(answer.index), content_type="application/json"
        )
    response = reply(select(opts.predicate, answer.data), answer.index)
    if acl_filtered:
        response.headers[FILTERED] = "true"
    return response


# -- ACLs ---------------------------------------------------------------------

FILTERED = "X-Consul-Results-Filtered-By-ACLs"


async def authorize(request: web.Request, opts: QueryOptions) -> Authorizer:
    """The rights of the request's token; ``PermissionDenied("ACL not
    found")`` for an unknown one. With ACLs off, the allow-all stand-in at
    the cost of one attribute read."""
    acl = ctx(request).acl
    if acl is None:
        return ALLOW_ALL
    hit = acl.cached(opts.token)
    if hit is not None:
        return hit
    resolved: Authorizer = await run(request, acl.resolve, opts.token)
    return resolved


def acl_filter(answer: Answer, keep: Callable[[Any], bool]) -> tuple[Answer, bool]:
    """``answer`` with only the items (of a list) or keys (of a dict) that
    ``keep`` accepts, and whether any were removed."""
    data = answer.data
    if isinstance(data, dict):
        kept_map = {k: v for k, v in data.items() if keep(k)}
        if len(kept_map) == len(data):
            return answer, False
        return replace(answer, data=kept_map, raw=None), True
    if isinstance(data, list):
        kept = [item for item in data if keep(item)]
        if len(kept) == len(data):
            return answer, False
        return replace(answer, data=kept, raw=None), True
    return answer, False


async def json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"Request decode failed: {exc}") from exc
