"""A whole pipeline in one test session: simulator, ingress, one worker with every role.

Why session-scoped: a Faust worker's group join costs seconds; paying it per test would make the
suite slow. Tests stay independent by using their own tenant and phone number (and so their own
keys, partitions' state and simulator recipients), never another test's leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from onyx_wa.broker import free_port
from onyx_wa.settings import Settings, load_settings

_numbers = itertools.count(int(time.time()) % 1_000_000 * 1000 + 100_000_000_000)


@dataclass
class TestBot:
    tenant_id: str
    phone_number_id: str
    app_secret: str
    verify_token: str
    access_token: str
    display_phone_number: str


@dataclass
class Pipeline:
    settings: Settings
    http: aiohttp.ClientSession
    runners: list[web.AppRunner] = field(default_factory=list)
    worker: Any = None
    ingress_close: Any = None

    onyx_url: str = ""

    @property
    def sim_url(self) -> str:
        return self.settings.graph_base_url

    @contextlib.asynccontextmanager
    async def _store_for(self, bot: TestBot) -> AsyncIterator[tuple[Any, int]]:
        """A session factory on the pipeline's database (secrets readable) and ``bot``'s id."""
        from sqlalchemy import select

        from store.crypto import SecretBox, attach_secret_box, resolve_encryption_key
        from store.db import make_engine, session_factory
        from store.models import WhatsAppBot

        engine = make_engine(self.settings.sqlalchemy_url)
        attach_secret_box(engine, SecretBox(resolve_encryption_key(self.settings)))
        try:
            sessions = session_factory(engine)
            async with sessions() as session:
                bot_id = await session.scalar(
                    select(WhatsAppBot.id).where(WhatsAppBot.phone_number_id == bot.phone_number_id)
                )
            yield sessions, bot_id
        finally:
            await engine.dispose()

    async def add_chat_config(self, bot: TestBot, **fields: Any) -> Any:
        """A chat config for ``bot`` (see ``store.repo.ChatConfigRepository.add``)."""
        from store.repo import ChatConfigRepository

        async with self._store_for(bot) as (sessions, bot_id):
            added = await ChatConfigRepository(sessions).add(bot_id, **fields)
        await self.config_reached_services()
        return added

    async def link_user(self, bot: TestBot, user_id: str, **fields: Any) -> Any:
        """Link a WhatsApp user of ``bot`` (see ``store.repo.UserLinkRepository.upsert``)."""
        from store.repo import UserLinkRepository

        async with self._store_for(bot) as (sessions, bot_id):
            linked = await UserLinkRepository(sessions).upsert(bot_id, user_id, **fields)
        await self.config_reached_services()
        return linked

    async def config_reached_services(self) -> None:
        """Wait out the documented delay (``bot_cache_ttl_s``) before a change is in effect.

        The ingress and the workers check the config version at most once per TTL. A webhook
        sent right after a change, within the TTL of their last check, still meets the old
        snapshot: a new bot's first message then went to the unrouted topic (a test that sent
        one 145 ms after the last check failed in every full run)."""
        await asyncio.sleep(self.settings.bot_cache_ttl_s * 1.5)

    async def onyx(self, method: str, path: str, body: Any = None) -> Any:
        """Call the fake Onyx's control API (``/_fake/...``)."""
        async with self.http.request(method, f"{self.onyx_url}{path}", json=body) as resp:
            return await resp.json()

    async def add_bot(self, **overrides: Any) -> TestBot:
        from onyx_wa.bots import add_bot

        suffix = uuid.uuid4().hex[:8]
        bot = TestBot(
            tenant_id=overrides.pop("tenant_id", f"t-{suffix}"),
            phone_number_id=str(next(_numbers)),
            app_secret=f"secret-{suffix}",
            verify_token=f"verify-{suffix}",
            access_token=f"token-{suffix}",
            display_phone_number=str(next(_numbers))[-11:],
        )
        await add_bot(
            self.settings,
            tenant_id=bot.tenant_id,
            phone_number_id=bot.phone_number_id,
            app_secret=bot.app_secret,
            verify_token=bot.verify_token,
            access_token=bot.access_token,
            display_phone_number=bot.display_phone_number,
            name=f"Bot {suffix}",
            **overrides,
        )
        await self.config_reached_services()
        return bot

    def meta(self, bot: TestBot) -> Any:
        from sim.meta import MetaWebhookSender

        return MetaWebhookSender(
            self.settings.ingress_url, {bot.phone_number_id: bot.app_secret}, self.http
        )

    async def sent_to(self, recipient: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.sim_url}/_sim/messages") as resp:
            messages = await resp.json()
        return [m for m in messages if recipient in (m.get("to"), m.get("recipient"))]

    async def wait_for(
        self, recipient: str, count: int, timeout_s: float = 30.0, settle_s: float = 1.0
    ) -> list[dict[str, Any]]:
        """Messages sent to ``recipient`` once at least ``count`` arrived (then a quiet period
        so that a duplicate would show up too)."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = await self.sent_to(recipient)
            if len(got) >= count:
                await asyncio.sleep(settle_s)
                return await self.sent_to(recipient)
            if time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.1)


async def start_pipeline(
    bootstrap: str, data_dir: Path, database_url: str | None, **overrides: Any
) -> Pipeline:
    from sim.whatsapp import build_sim_app
    from store.migrate import upgrade
    from streams.worker import Worker

    sim_port = free_port()
    ingress_port = free_port()
    settings = load_settings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=f"e2e{uuid.uuid4().hex[:8]}",
        partitions=4,
        kafka_session_timeout_s=6.0,
        data_dir=data_dir,
        database_url=database_url,
        encryption_key=_fernet_key(),
        sim_port=sim_port,
        ingress_port=ingress_port,
        bot_cache_ttl_s=0.2,
        user_questions_per_minute=1000,
        **overrides,
    )
    await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
    http = aiohttp.ClientSession()
    pipeline = Pipeline(settings=settings, http=http)
    sim_runner = web.AppRunner(build_sim_app(validator=_validator()), access_log=None)
    await sim_runner.setup()
    await web.TCPSite(sim_runner, "127.0.0.1", sim_port).start()
    pipeline.runners.append(sim_runner)
    from sim.onyx import build_fake_onyx_app

    onyx_port = free_port()
    onyx_runner = web.AppRunner(build_fake_onyx_app(), access_log=None)
    await onyx_runner.setup()
    await web.TCPSite(onyx_runner, "127.0.0.1", onyx_port).start()
    pipeline.runners.append(onyx_runner)
    pipeline.onyx_url = f"http://127.0.0.1:{onyx_port}"
    from ingress.app import start_ingress

    pipeline.ingress_close = await start_ingress(settings, host="127.0.0.1", port=ingress_port)
    pipeline.worker = Worker(settings)
    await pipeline.worker.start()
    await pipeline.worker.wait_ready(timeout_s=60)
    return pipeline


async def module_pipeline(kafka_target: Any, data_dir: Path) -> AsyncIterator[Pipeline]:
    """The body of a test module's ``pipeline`` fixture: one pipeline on the session broker
    (database from ``ONYX_WA_E2E_DATABASE_URL`` if set), stopped after the module."""
    import os

    pipe = await start_pipeline(
        kafka_target.bootstrap_servers,
        data_dir,
        os.environ.get("ONYX_WA_E2E_DATABASE_URL"),
        broker_flavor="tansu" if kafka_target.embedded else "kafka",
    )
    try:
        yield pipe
    finally:
        await stop_pipeline(pipe)


async def stop_pipeline(pipeline: Pipeline) -> None:
    if pipeline.worker is not None:
        await pipeline.worker.stop()
    if pipeline.ingress_close is not None:
        await pipeline.ingress_close()
    for runner in pipeline.runners:
        await runner.cleanup()
    await pipeline.http.close()


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _validator() -> Any:
    from sim.spec import load_validator

    return load_validator()
