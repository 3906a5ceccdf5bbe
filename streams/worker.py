"""``onyx-wa worker``: run the Faust app for some roles, with health and metrics over HTTP.

Why not ``faust worker``: we start Faust inside our own event loop so that settings errors,
database checks and topic creation happen first with one-line errors, and so the same code runs
in tests (a session-scoped worker) and under ``onyx-wa up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from onyx_wa.gc_tuning import tune_gc
from onyx_wa.kafka import ensure_pipeline_topics, wait_for_broker
from onyx_wa.runtime import wait_stop
from onyx_wa.settings import Settings
from streams.app import ROLES, build_app

log = logging.getLogger(__name__)


def app_ready(app: Any) -> bool:
    """A started Faust app has joined its group and holds partitions, not mid-rebalance.

    Also what the benchmarks' bare Faust apps answer on ``/readyz``: one definition of ready.
    """
    try:
        consumer = app.consumer
    except Exception:  # not started yet
        return False
    return not app.rebalancing and bool(consumer.assignment())


class WorkerCrashed(RuntimeError):
    """The Faust app crashed. The process exits non-zero so that its supervisor restarts it,
    and the new process resumes from the committed offsets."""


class Worker:
    """A started Faust app plus the resources its stages share; ``stop()`` releases all."""

    def __init__(self, settings: Settings, roles: Iterable[str] = ROLES) -> None:
        self.settings = settings
        self.roles = tuple(sorted(set(roles)))
        self.app: Any = None
        self.ctx: Any = None
        self._engine: Any = None
        self._web: web.AppRunner | None = None

    async def start(self, *, web_port: int | None = None) -> None:
        from store.privacy import configure as configure_hashing
        from streams.config import open_config_lookup

        await wait_for_broker(self.settings.bootstrap_servers, timeout_s=10)
        await ensure_pipeline_topics(self.settings)
        configure_hashing(self.settings)  # user_hash/chat_hash: one secret for the process
        config, self._engine = await open_config_lookup(self.settings)
        self.app, self.ctx = build_app(self.settings, self.roles, config=config)
        await self.app.start()
        if web_port is not None:
            await self._start_web(web_port)

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; raise :class:`WorkerCrashed` if the Faust app crashes first.

        Why: mode marks a crashed app and stops its services, and nothing else ends the process.
        A crashed worker would stay up, answering ``/healthz``, and consume nothing.
        """
        crashed = asyncio.ensure_future(self.app._crashed.wait())
        try:
            await wait_stop(stop, crashed)
        finally:
            crashed.cancel()
        if self.app.crashed and not stop.is_set():
            raise WorkerCrashed(f"the Faust app crashed: {self.app.crash_reason!r}")

    def ready(self) -> bool:
        """Joined the group and got an assignment (or the group has more workers than parts)."""
        return self.app is not None and app_ready(self.app)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.ready():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"worker {self.roles} not assigned within {timeout_s:.0f} s")
            await asyncio.sleep(0.1)

    async def _start_web(self, port: int) -> None:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "alive"})

        async def readyz(_: web.Request) -> web.Response:
            ok = self.ready()
            return web.json_response(
                {"status": "ready" if ok else "starting", "roles": list(self.roles)},
                status=200 if ok else 503,
            )

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        self._web = web.AppRunner(app, access_log=None)
        await self._web.setup()
        await web.TCPSite(self._web, self.settings.ingress_host, port).start()

    async def stop(self) -> None:
        if self._web is not None:
            await self._web.cleanup()
        loop = self.ctx.resources.get("sender_loop") if self.ctx is not None else None
        if loop is not None:
            # before the app: its sends in flight finish and their offsets are committed while
            # this worker still holds their partitions (``egress.sender_loop``)
            with contextlib.suppress(Exception):
                await loop.stop()
        if self.app is not None:
            with contextlib.suppress(Exception):
                await self.app.stop()
        if self.ctx is not None:
            for name in ("answer_service", "sender", "config"):
                resource = self.ctx.resources.get(name)
                if resource is not None:
                    with contextlib.suppress(Exception):
                        await resource.aclose()
        if self._engine is not None:
            await self._engine.dispose()


async def serve_worker(settings: Settings, roles: Iterable[str], stop: asyncio.Event) -> None:
    worker = Worker(settings, roles)
    try:
        await worker.start(web_port=settings.worker_web_port or None)
        # after start: the app, its stages and its tables' structures are built (gc_tuning.py)
        tune_gc(settings.gc_young_threshold)
        log.info("worker %s running", ",".join(worker.roles))
        await worker.run_until(stop)
    finally:
        await worker.stop()
