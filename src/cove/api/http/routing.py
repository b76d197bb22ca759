"""The application: routes, per-app state, middlewares and lifecycle.

Routes are added as in aiohttp (``app.router.add_get("/v1/kv/{key:.*}",
handler)``): ``{name}`` matches one path segment, ``{name:regex}`` what the
regex matches. Matching runs on the percent-encoded path and each matched
value is decoded afterwards, so ``/v1/kv/a%2Fb`` gives the key ``a/b``.
Exact paths are one dict lookup; patterns are tried in the order they were
added (after a cheap test of their literal prefix). A path that matches only
routes of other methods gets 405 with ``Allow``; one that matches nothing,
404. ``add_get`` answers HEAD too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import unquote

from cove.api.http.objects import Request, Response, StreamResponse

T = TypeVar("T")

Handler = Callable[[Request], Awaitable[StreamResponse]]
# Runs before routing; a response it returns answers instead of any route.
Screen = Callable[[Request], StreamResponse | None]
Middleware = Callable[[Request, Handler], Awaitable[StreamResponse]]
CleanupContext = Callable[["Application"], AsyncIterator[None]]

DEFAULT_MAX_BODY = 1024 * 1024


def middleware(func: Middleware) -> Middleware:
    """Marks a middleware (kept for readers used to aiohttp's decorator)."""
    return func


class AppKey(Generic[T]):
    """A typed key of an application's state."""

    __slots__ = ("name",)

    def __init__(self, name: str, _type: type[T] | None = None) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<AppKey {self.name}>"


_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::((?:[^{}]|\{[^{}]*\})+))?\}")


@dataclass(slots=True)
class _Pattern:
    prefix: str  # the literal text before the first variable
    regex: re.Pattern[str]
    handlers: dict[str, Handler]


def _compile(path: str) -> re.Pattern[str]:
    out = []
    pos = 0
    for m in _SEGMENT.finditer(path):
        out.append(re.escape(path[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>{m.group(2) or '[^{}/]+'})")
        pos = m.end()
    out.append(re.escape(path[pos:]))
    return re.compile("".join(out))


class Router:
    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[_Pattern] = []
        self._by_path: dict[str, _Pattern] = {}

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        method = method.upper()
        if not path.startswith("/"):
            raise ValueError(f"a route path starts with '/': {path!r}")
        if "{" not in path:
            handlers = self._exact.setdefault(path, {})
        else:
            pattern = self._by_path.get(path)
            if pattern is None:
                brace = path.index("{")
                pattern = _Pattern(path[:brace], _compile(path), {})
                self._by_path[path] = pattern
                self._patterns.append(pattern)
            handlers = pattern.handlers
        if method in handlers:
            raise ValueError(f"{method} {path} is routed twice")
        handlers[method] = handler

    def add_get(self, path: str, handler: Handler) -> None:
        self.add_route("GET", path, handler)
        self.add_route("HEAD", path, handler)

    def add_put(self, path: str, handler: Handler) -> None:
        self.add_route("PUT", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add_route("POST", path, handler)

    def add_delete(self, path: str, handler: Handler) -> None:
        self.add_route("DELETE", path, handler)

    def resolve(
        self, method: str, raw_path: str
    ) -> tuple[Handler | None, dict[str, str], set[str]]:
        """The handler and the decoded match values; or None and the methods
        the path allows (empty: no route matches at all)."""
        allowed: set[str] = set()
        exact = self._exact.get(raw_path)
        if exact is not None:
            found = exact.get(method)
            if found is not None:
                return found, {}, allowed
            allowed.update(exact)
        for pattern in self._patterns:
            if not raw_path.startswith(pattern.prefix):
                continue
            m = pattern.regex.fullmatch(raw_path)
            if m is None:
                continue
            found = pattern.handlers.get(method)
            if found is not None:
                return found, {k: unquote(v) for k, v in m.groupdict().items()}, allowed
            allowed.update(pattern.handlers)
        return None, {}, allowed


class Application:
    """Routes, state (``app[KEY]``), middlewares and cleanup contexts."""

    def __init__(
        self, *, middlewares: Sequence[Middleware] = (), client_max_size: int = DEFAULT_MAX_BODY
    ) -> None:
        self.router = Router()
        self.middlewares = list(middlewares)
        self.client_max_size = client_max_size
        self.cleanup_ctx: list[CleanupContext] = []
        self.screens: list[Screen] = []
        self._state: dict[AppKey[Any], Any] = {}
        self._running: list[AsyncIterator[None]] = []

    def __getitem__(self, key: AppKey[T]) -> T:
        value: T = self._state[key]
        return value

    def __setitem__(self, key: AppKey[T], value: T) -> None:
        self._state[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self._state

    async def startup(self) -> None:
        """Run each cleanup context up to its ``yield``."""
        for ctx in self.cleanup_ctx:
            it = ctx(self)
            await anext(it)
            self._running.append(it)

    async def cleanup(self) -> None:
        """Finish the cleanup contexts, the last started first."""
        while self._running:
            it = self._running.pop()
            with contextlib.suppress(StopAsyncIteration):
                await anext(it)

    async def handle(self, request: Request) -> StreamResponse:
        for screen in self.screens:
            refusal = screen(request)
            if refusal is not None:
                return refusal
        handler, match, allowed = self.router.resolve(request.method, request.raw_path)
        if handler is None:
            if allowed:
                return Response(
                    status=405,
                    text="405: Method Not Allowed",
                    headers={"Allow": ",".join(sorted(allowed))},
                )
            return Response(status=404, text="404: Not Found")
        request.match_info = match
        if not self.middlewares:
            return await handler(request)
        call = handler
        for mw in reversed(self.middlewares):
            call = _bind(mw, call)
        return await call(request)


def _bind(mw: Middleware, inner: Handler) -> Handler:
    async def call(request: Request) -> StreamResponse:
        return await mw(request, inner)

    return call
