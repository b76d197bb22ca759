"""Prometheus text exposition at /metrics. Each part of the agent registers a
function returning its samples; nothing is kept in module globals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from cove.api import http as web

Sample = tuple[str, str, float]  # (name, help, value)
Source = Callable[[], Iterable[Sample]]


class Metrics:
    def __init__(self) -> None:
        self._sources: list[Source] = []

    def add(self, source: Source) -> None:
        self._sources.append(source)

    def samples(self) -> list[Sample]:
        """Every source's samples, as they are now."""
        return [sample for source in self._sources for sample in source()]

    def render(self) -> str:
        lines: list[str] = []
        for source in self._sources:
            for name, help_text, value in source():
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} gauge")
                lines.append(f"{name} {value:g}")
        return "\n".join(lines) + "\n"

    def install(self, app: web.Application) -> None:
        async def handler(_: web.Request) -> web.Response:
            text = await asyncio.to_thread(self.render)
            return web.Response(text=text, content_type="text/plain", charset="utf-8")

        app.router.add_get("/metrics", handler)
