"""/v1/kv/..., /v1/session/... and /v1/txn."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cove.acl import Access, Authorizer
from cove.api import http as web
from cove.api.consul.common import (
    QueryOptions,
    acl_filter,
    answer_reply,
    authorize,
    blocking,
    consul_errors,
    ctx,
    flag,
    json_body,
    meta_headers,
    options,
    reply,
    run,
    write,
)
from cove.errors import Conflict, InvalidArgument, NotFound
from cove.registry import txn_catalog
from cove.registry import types as t
from cove.registry.decode import fold, integer, text
from cove.registry.kv import MAX_TXN_OPS, MAX_VALUE, KVOp, TooLarge
from cove.registry.queries import Answer
from cove.registry.txn_catalog import CatalogOp

_MAX_UINT64 = 2**64 - 1


def _uint(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidArgument(f"Invalid {name} index: {raw!r}") from exc
    if not 0 <= value <= _MAX_UINT64:
        raise InvalidArgument(f"Invalid {name} index: {raw!r}")
    return value


@consul_errors
async def kv_get(request: web.Request) -> web.StreamResponse:
    opts = options(request)
    authz = await authorize(request, opts)
    kv = ctx(request).registry.kv
    key = request.match_info["key"]
    if "keys" in request.query:
        sep = request.query.get("separator", "")
        answer = await blocking(request, opts, lambda: kv.keys(key, sep), (t.kv_key(key),))
        if authz.enabled and not authz.reads_all("key"):
            answer, removed = acl_filter(answer, lambda k: authz.allowed("key", k, Access.READ))
            return answer_reply(answer, opts, acl_filtered=removed)
        return answer_reply(answer, opts)
    if flag(request, "recurse"):
        answer = await blocking(request, opts, lambda: kv.get_tree(key), (t.kv_key(key),))
        if authz.enabled and not authz.reads_all("key"):
            answer, removed = acl_filter(
                answer, lambda e: authz.allowed("key", e["Key"], Access.READ)
            )
            return answer_reply(answer, opts, acl_filtered=removed)
        return answer_reply(answer, opts)
    authz.need("key", key, Access.READ)
    answer = await blocking(request, opts, lambda: kv.get(key), (t.kv_key(key),))
    if answer.found and flag(request, "raw"):
        value = base64.b64decode(answer.data[0]["Value"] or "")
        return web.Response(
            body=value, headers=meta_headers(answer.index), content_type="application/octet-stream"
        )
    return answer_reply(answer, opts)


@consul_errors
async def kv_put(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    kv = ctx(request).registry.kv
    key = request.match_info["key"]
    if not key:
        raise InvalidArgument("Missing key name")
    authz.need("key", key, Access.WRITE)
    length = request.content_length or 0
    if length > MAX_VALUE:
        raise TooLarge(_too_large(length))
    value = await request.read()
    if len(value) > MAX_VALUE:
        raise TooLarge(_too_large(len(value)))
    flags = _uint(request, "flags") or 0
    cas = _uint(request, "cas")
    acquire = request.query.get("acquire", "")
    release = request.query.get("release", "")
    try:
        done = await write(
            request,
            lambda: kv.put(key, value, flags=flags, cas=cas, acquire=acquire, release=release),
        )
    except NotFound as exc:
        # Consul reports an unknown session as an internal error.
        return web.Response(status=500, text=exc.message)
    return reply(done)


def _too_large(size: int) -> str:
    return (
        f"Request body({size} bytes) too large, max size: {MAX_VALUE} bytes. See "
        "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
    )


@consul_errors
async def kv_delete(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    kv = ctx(request).registry.kv
    key = request.match_info["key"]
    recurse = flag(request, "recurse")
    if not key and not recurse:
        raise InvalidArgument("Missing key name")
    if recurse:
        authz.need_write_prefix("key", key)
    else:
        authz.need("key", key, Access.WRITE)
    cas = _uint(request, "cas")
    done = await write(request, lambda: kv.delete(key, recurse=recurse, cas=cas))
    return reply(done)


# -- sessions -------------------------------------------------------------------


@consul_errors
async def session_create(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    sessions = ctx(request).registry.sessions
    body = await json_body(request)
    if authz.enabled:
        node = fold(body, "session").get("node") if isinstance(body, dict) else None
        authz.need("session", str(node or ctx(request).registry.node_name), Access.WRITE)
    try:
        sid = await write(request, sessions.create, body)
    except Conflict as exc:
        return web.Response(status=500, text=exc.message)
    return reply({"ID": sid})


@consul_errors
async def session_destroy(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    sessions = ctx(request).registry.sessions
    await _session_write(request, authz, request.match_info["id"])
    await write(request, sessions.destroy, request.match_info["id"])
    return reply(True)


@consul_errors
async def session_info(request: web.Request) -> web.Response:
    opts = options(request)
    sessions = ctx(request).registry.sessions
    sid = request.match_info["id"]
    authz = await authorize(request, opts)
    answer = await blocking(request, opts, lambda: sessions.info(sid), (t.session_key(sid),))
    return _sessions_reply(answer, opts, authz)


@consul_errors
async def session_list(request: web.Request) -> web.Response:
    opts = options(request)
    sessions = ctx(request).registry.sessions
    authz = await authorize(request, opts)
    answer = await blocking(request, opts, lambda: sessions.list(), (t.SESSIONS,))
    return _sessions_reply(answer, opts, authz)


@consul_errors
async def session_node(request: web.Request) -> web.Response:
    opts = options(request)
    sessions = ctx(request).registry.sessions
    node = request.match_info["node"]
    authz = await authorize(request, opts)
    answer = await blocking(request, opts, lambda: sessions.list(node), (t.SESSIONS,))
    return _sessions_reply(answer, opts, authz)


@consul_errors
async def session_renew(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    sessions = ctx(request).registry.sessions
    await _session_write(request, authz, request.match_info["id"])
    answer = await run(request, sessions.renew, request.match_info["id"])
    return reply(answer.data, answer.index)


async def _session_write(request: web.Request, authz: Authorizer, sid: str) -> None:
    if not authz.enabled:
        return
    sessions = ctx(request).registry.sessions
    answer = await run(request, sessions.info, sid)
    for entry in answer.data or ():
        authz.need("session", str(entry.get("Node", "")), Access.WRITE)


def _sessions_reply(answer: Answer, opts: QueryOptions, authz: Authorizer) -> web.Response:
    if not authz.enabled or authz.reads_all("session"):
        return answer_reply(answer, opts)
    answer, removed = acl_filter(
        answer, lambda s: authz.allowed("session", str(s.get("Node", "")), Access.READ)
    )
    return answer_reply(answer, opts, acl_filtered=removed)


# -- transactions ---------------------------------------------------------------


def parse_txn(body: Any) -> list[KVOp | CatalogOp]:
    """The KV, Node, Service and Check operations of a /v1/txn body;
    ``InvalidArgument`` for anything malformed and ``TooLarge`` past 64
    operations."""
    if not isinstance(body, list):
        raise InvalidArgument("Failed to parse body: expected a list of operations")
    if len(body) > MAX_TXN_OPS:
        raise TooLarge(f"Transaction contains too many operations ({len(body)} > {MAX_TXN_OPS})")
    ops: list[KVOp | CatalogOp] = []
    for i, raw in enumerate(body):
        item = fold(raw, f"operation {i}")
        kinds = [k for k in ("kv", "node", "service", "check") if item.get(k) is not None]
        if len(kinds) != 1:
            got = ", ".join(sorted(item)) or "nothing"
            raise InvalidArgument(
                f"operation {i}: expected exactly one of KV, Node, Service or Check, got {got}"
            )
        if kinds[0] != "kv":
            ops.append(txn_catalog.parse(kinds[0].title(), item[kinds[0]], i))
            continue
        d = fold(item["kv"], f"operation {i}")
        verb = text(d, "verb", "Verb")
        value: bytes | None = None
        if d.get("value") is not None:
            try:
                value = base64.b64decode(text(d, "value", "Value"), validate=True)
            except binascii.Error as exc:
                raise InvalidArgument(f"operation {i}: Value is not base64: {exc}") from exc
        ops.append(
            KVOp(
                verb=verb,
                key=text(d, "key", "Key"),
                value=value,
                flags=integer(d, "flags", "Flags"),
                index=integer(d, "index", "Index"),
                session=text(d, "session", "Session"),
            )
        )
    return ops


@consul_errors
async def txn(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    kv = ctx(request).registry.kv
    raw = await request.read()
    if len(raw) > MAX_VALUE * 2:
        raise TooLarge(_too_large(len(raw)))
    body = await json_body(request)
    ops = parse_txn(body)
    if authz.enabled:
        for op in ops:
            _txn_check(authz, op)
    results = await write(request, kv.txn, ops, ctx(request).registry.datacenter)
    # KV entries come bare; Node, Service and Check results name their kind.
    out = [{"KV": r} if "Key" in r else r for r in results]
    return reply({"Results": out, "Errors": None})


_READ_VERBS = frozenset({"get", "check-index", "check-session", "check-not-exists"})


def _txn_check(authz: Authorizer, op: KVOp | CatalogOp) -> None:
    """Refuse the whole transaction (nothing runs) when one operation is
    not allowed."""
    if isinstance(op, CatalogOp):
        need = Access.READ if op.verb == "get" else Access.WRITE
        if op.kind == "Node":
            authz.need("node", op.node, need)
        elif op.kind == "Service" and op.service_name:
            authz.need("service", op.service_name, need)
        else:  # a check, or a service named only by ID: write on its node
            authz.need("node", op.node, need)
        return
    if op.verb in _READ_VERBS:
        authz.need("key", op.key, Access.READ)
    elif op.verb == "get-tree":
        authz.need("key", op.key, Access.LIST)
    elif op.verb == "delete-tree":
        authz.need_write_prefix("key", op.key)
    else:
        authz.need("key", op.key, Access.WRITE)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/kv/{key:.*}", kv_get)
    r.add_put("/v1/kv/{key:.*}", kv_put)
    r.add_delete("/v1/kv/{key:.*}", kv_delete)
    r.add_put("/v1/session/create", session_create)
    r.add_put("/v1/session/destroy/{id}", session_destroy)
    r.add_get("/v1/session/info/{id}", session_info)
    r.add_get("/v1/session/list", session_list)
    r.add_get("/v1/session/node/{node}", session_node)
    r.add_put("/v1/session/renew/{id}", session_renew)
    r.add_put("/v1/txn", txn)
