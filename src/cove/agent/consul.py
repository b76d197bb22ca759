"""Serve the Consul API alone, on a thread with its own event loop.

The agent serves /v1 inside its own app; this standalone server is for
compatibility tests and benchmarks that need a real HTTP endpoint without a
whole agent (no root, no kernel). It assembles the registry part exactly as
the agent does (``cove.agent.registry.RegistryParts``)::

    with ConsulServer(store, clock, node_name="n1") as server:
        consul.Consul(port=server.port)
"""

from __future__ import annotations

import asyncio
import logging
import threading
from types import TracebackType

from cove.acl import AclService
from cove.agent.registry import RegistryParts
from cove.api import http as web
from cove.api.consul import CONSUL, Consul
from cove.api.guard import Guard
from cove.clock import Clock
from cove.errors import Unavailable
from cove.registry.runner import CheckRunner
from cove.store.base import Store
from cove.store.hub import WatchHub

log = logging.getLogger(__name__)


class ConsulServer:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        node_name: str = "cove-test",
        datacenter: str = "dc1",
        host: str = "127.0.0.1",
        port: int = 0,
        enable_script_checks: bool = False,
        run_checks: bool = True,
        unix_path: str | None = None,
        acl: AclService | None = None,
        limits: web.ConnectionLimits | None = None,
    ) -> None:
        self.hub = WatchHub(store, poll=0.2)
        self.parts = RegistryParts(
            store,
            clock,
            self.hub,
            node_name=node_name,
            datacenter=datacenter,
            node_address=host,
            enable_script_checks=enable_script_checks,
            acl=acl,
            run_checks=run_checks,
        )
        self.registry = self.parts.registry
        self.host = host
        self.port = port
        self.unix_path = unix_path  # also serve here (as the agent's socket)
        self.limits = limits or web.ConnectionLimits()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.runner: CheckRunner | None = self.parts.checks
        self.state: Consul | None = None  # the app's Consul state, once serving
        self.acl = acl

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ConsulServer:
        self.hub.start()
        self._thread = threading.Thread(target=self._main, name="cove-consul-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise Unavailable(f"the Consul API did not start: {self._error}")
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() and logged
            self._error = exc
            self._ready.set()
            log.exception("the Consul API server failed")
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        await self.parts.start()
        app = web.Application(client_max_size=8 * 1024 * 1024)
        self.parts.install(app)
        app.screens.append(Guard.of(self.unix_path or "the agent's socket"))
        self.state = app[CONSUL]
        # Blocked long polls must not hold a stop for their whole wait.
        http = web.HttpServer(app, shutdown_timeout=2.0, limits=self.limits)
        await http.setup()
        try:
            self.port = await http.start_tcp(self.host, self.port)
            if self.unix_path:
                await http.start_unix(self.unix_path)
            self._ready.set()
            await self._stopping.wait()
        finally:
            await http.stop()
            await self.parts.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.hub.stop()

    def __enter__(self) -> ConsulServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
