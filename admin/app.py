"""The admin aiohttp application: middlewares, routes, health, the OpenAPI document, serving.

Layout (so the web UI and the analytics API can be added without touching what exists):

- ``/healthz``, ``/readyz``: liveness and readiness, no token.
- ``/metrics``: Prometheus metrics (``admin.metrics``: counts by route pattern, no ids), no token.
- ``/openapi.json``: the OpenAPI 3.1 document of every route table passed in, no token.
- ``/api/...``: JSON routes from route tables (``admin.api.ROUTES`` and any extra ones), all
  behind bearer tokens.
- ``/ui/``: the web UI's static files (``admin.ui``; no token: the UI calls the API with one);
  ``/`` redirects there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from admin.api import (
    PATH_PATTERNS,
    PRINCIPAL_KEY,
    ROUTES,
    STATUS_KEY,
    Call,
    Route,
    parse_query,
    read_body,
)
from admin.audit import PendingAudit, audited_sessions
from admin.auth import TokenAuth
from admin.errors import error_middleware, unauthorized
from admin.metrics import METRICS_KEY, AdminMetrics
from admin.openapi import build_openapi
from onyx_wa.runtime import StartupError
from onyx_wa.settings import Settings, SettingsError
from store.crypto import SecretBox
from store.repo import BotRepository, ChatConfigRepository, Sessions, UserLinkRepository

log = logging.getLogger("admin")

MAX_BODY_BYTES = 1024 * 1024


@dataclass
class AdminContext:
    """What handlers need: the database, the key for secrets, and the tokens."""

    sessions: Sessions
    box: SecretBox
    auth: TokenAuth
    ready_check: Callable[[], Awaitable[dict[str, bool]]] | None = None
    # publishes a ForgetRequest (key, record) to wa.forget; None: deleting user data is refused
    forget_publisher: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
    settings: Settings | None = None  # for the user-hash secret (store.privacy)
    # GET /api/v1/lag: groups -> the ops.lag report dict; None: admin.lag.LagSource(settings)
    lag_source: Callable[[list[str] | None], Awaitable[dict[str, Any]]] | None = None

    def _sessions(self, pending: PendingAudit | None) -> Sessions:
        return audited_sessions(self.sessions, pending) if pending is not None else self.sessions

    def bots(self, pending: PendingAudit | None = None) -> BotRepository:
        return BotRepository(self._sessions(pending), self.box)

    def chats(self, pending: PendingAudit | None = None) -> ChatConfigRepository:
        return ChatConfigRepository(self._sessions(pending))

    def users(self, pending: PendingAudit | None = None) -> UserLinkRepository:
        return UserLinkRepository(self._sessions(pending))


CONTEXT_KEY = web.AppKey("admin_context", AdminContext)


class ForgetPublisher:
    """Publishes ForgetRequest records to ``wa.forget``; the producer starts on first use.

    Why lazily: the admin API must start (and serve everything else) while the broker is down;
    only deleting user data needs Kafka, and answers 503 until the broker is back.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _started(self) -> Any:
        async with self._lock:
            if self._producer is None:
                from onyx_wa.kafka import start_producer

                self._producer = await start_producer(self.settings)
            return self._producer

    async def __call__(self, key: str, record: dict[str, Any]) -> None:
        from onyx_wa import topics as t
        from schemas.codec import get_codec

        producer = await self._started()
        data = get_codec().encode(t.FORGET.schema, record)
        name = t.full_name(t.FORGET, self.settings.topic_prefix)
        await asyncio.wait_for(
            producer.send_and_wait(name, data, key=key.encode()),
            timeout=self.settings.publish_timeout_s,
        )

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every ``/api/`` request needs a valid bearer token, even for unknown paths."""
    if request.path.startswith("/api/"):
        context: AdminContext = request.app[CONTEXT_KEY]
        principal, reason = context.auth.authenticate(request.headers.get("Authorization"))
        if principal is None:
            raise unauthorized(reason)
        request[PRINCIPAL_KEY] = principal
    return await handler(request)


@web.middleware
async def access_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """One log line and one metric sample per request, naming the route pattern (no ids or
    phone numbers)."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect raised by a handler (errors are responses)
        request.config_dict[METRICS_KEY].observe(request, exc.status, time.perf_counter() - started)
        raise
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "-"
    principal = request.get(PRINCIPAL_KEY)
    log.info(
        "admin %s %s -> %d by %s in %.1f ms",
        request.method,
        route,
        response.status,
        principal.actor if principal is not None else "-",
        (time.perf_counter() - started) * 1000,
    )
    request.config_dict[METRICS_KEY].observe(
        request, response.status, time.perf_counter() - started
    )
    return response


def _handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        call = Call(
            request=request,
            principal=request[PRINCIPAL_KEY],
            ctx=request.app[CONTEXT_KEY],
            query=parse_query(request, route.query),
        )
        if route.body is not None:
            call.body = await read_body(request, route.body)
        result = await route.handler(call)
        status = request.get(STATUS_KEY, route.status)
        if status == 204 or result is None:
            return web.Response(status=204)
        data = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        return web.json_response(data, status=status)

    handle.__name__ = route.operation_id
    return handle


def router_path(path: str) -> str:
    """OpenAPI ``{bot_id}`` → aiohttp ``{bot_id:[0-9]{1,18}}``."""
    for name, pattern in PATH_PATTERNS.items():
        path = path.replace("{" + name + "}", "{" + name + ":" + pattern + "}")
    return path


def create_app(
    context: AdminContext,
    *,
    extra_routes: Iterable[Route] = (),
    title: str = "onyx-wa admin API",
    ui: bool = True,
) -> web.Application:
    """The admin application for ``context``; ``extra_routes`` adds more API route tables.

    ``ui``: serve the web UI's static files at ``/ui/`` (``admin.ui``).
    """
    routes = (*ROUTES, *extra_routes)
    app = web.Application(
        middlewares=[access_middleware, error_middleware, auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONTEXT_KEY] = context
    app[METRICS_KEY] = metrics = AdminMetrics()
    document = build_openapi(routes, title=title)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await context.ready_check() if context.ready_check else {}
        ok = all(checks.values())
        return web.json_response(checks, status=200 if ok else 503)

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics.view)
    for route in routes:
        app.router.add_route(route.method, router_path(route.path), _handler(route))
    if ui:
        from admin.ui import mount_ui

        mount_ui(app)
    return app


# --- serving ------------------------------------------------------------------------------------


async def start_admin(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> tuple[Callable[[], Awaitable[None]], int]:
    """Check tokens, database and schema, then serve; returns ``(close, bound_port)``."""
    from store.crypto import resolve_encryption_key
    from store.db import check_database, make_engine, session_factory
    from store.migrate import current, head

    auth = TokenAuth.from_setting(settings.admin_tokens)
    if not len(auth):
        raise SettingsError(
            "ONYX_WA_ADMIN_TOKENS is not set: give at least one TOKEN=operator "
            "(or TOKEN=tenant:ID); see docs/admin.md"
        )
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await check_database(settings.sqlalchemy_url)
    head_rev = head()
    if await asyncio.to_thread(current, settings.sqlalchemy_url) != head_rev:
        raise StartupError("the database is not migrated: run `onyx-wa db upgrade` first")
    box = SecretBox(resolve_encryption_key(settings))
    from store.privacy import configure as configure_hashing

    configure_hashing(settings)
    engine = make_engine(settings.sqlalchemy_url)

    async def ready_check() -> dict[str, bool]:
        try:
            await check_database(settings.sqlalchemy_url, timeout_s=2)
        except Exception:  # noqa: BLE001 - readiness is a yes/no
            return {"database": False, "schema_current": False}
        try:
            rev = await asyncio.to_thread(current, settings.sqlalchemy_url)
        except Exception:  # noqa: BLE001
            rev = None
        return {"database": True, "schema_current": rev == head_rev}

    publisher = ForgetPublisher(settings)
    context = AdminContext(
        sessions=session_factory(engine),
        box=box,
        auth=auth,
        ready_check=ready_check,
        forget_publisher=publisher,
        settings=settings,
    )
    from admin.lag import ROUTES as LAG_ROUTES
    from analytics.api import ROUTES as ANALYTICS_ROUTES

    app = create_app(context, extra_routes=(*ANALYTICS_ROUTES, *LAG_ROUTES))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or settings.admin_host, settings.admin_port if port is None
                       else port)  # fmt: skip
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        await publisher.close()
        await engine.dispose()
        raise
    bound = site._server.sockets[0].getsockname()[1] if site._server else 0  # type: ignore[union-attr]

    async def close() -> None:
        await runner.cleanup()
        await publisher.close()
        await engine.dispose()

    log.info(
        "admin API on http://%s:%d (%d token(s)); OpenAPI at /openapi.json, web UI at /ui/",
        host or settings.admin_host,
        bound,
        len(auth),
    )
    return close, bound


async def serve_admin(settings: Settings, stop: asyncio.Event) -> None:
    """Run the admin API until ``stop`` is set (``onyx-wa admin``)."""
    close, _ = await start_admin(settings)
    try:
        await stop.wait()
    finally:
        await close()
