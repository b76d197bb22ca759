"""/v1/snapshot: GET saves the whole store, PUT restores it
(``cove.registry.snapshot``). Both need acl:write, as Consul's
SnapshotAllowed: a snapshot holds every ACL token's secret."""

from __future__ import annotations

from cove.acl import Access
from cove.api import http as web
from cove.api.consul.common import authorize, consul_errors, ctx, meta_headers, options, run, write
from cove.registry import snapshot


@consul_errors
async def save(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need_scalar("acl", Access.WRITE)
    reg = ctx(request).registry
    data, revision = await run(
        request,
        lambda: snapshot.save(reg.store, datacenter=reg.datacenter, node=reg.node_name),
    )
    return web.Response(
        body=data,
        headers=meta_headers(revision),
        content_type="application/x-gzip",
    )


@consul_errors
async def restore(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need_scalar("acl", Access.WRITE)
    c = ctx(request)
    data = await request.read()
    await write(request, snapshot.restore, c.registry.store, data)
    if c.runner is not None:
        c.runner.kick()  # this node's checks may have changed
    if c.acl is not None:
        c.acl.invalidate()
    return web.Response(status=200)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/snapshot", save)
    app.router.add_put("/v1/snapshot", restore)
