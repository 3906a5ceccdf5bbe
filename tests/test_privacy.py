"""Forgetting a user, end to end: /forget and the admin's delete-user-data remove the user's
conversation state (local store + changelog tombstone), user links and analytics facts; the
next message starts a fresh conversation.

Real broker, real database, the whole pipeline (simulator, ingress, one worker).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import func, select

from onyx_wa.broker import free_port
from store.models import AuditLogEntry, FeedbackFact, QuestionFact, WhatsAppBot, WhatsAppUserLink
from store.privacy import user_hash, user_hashes
from tests.pipeline_harness import module_pipeline

pytestmark = pytest.mark.timeout(240)

OP_TOKEN = "op-token-privacy-0123456789"
B_TOKEN = "tenant-b-token-privacy-012345"


@pytest.fixture(scope="module")
async def pipeline(kafka_target, tmp_path_factory):
    async for pipe in module_pipeline(kafka_target, tmp_path_factory.mktemp("privacy")):
        yield pipe


@pytest.fixture(scope="module")
async def store(pipeline):
    from store.crypto import SecretBox, attach_secret_box, resolve_encryption_key
    from store.db import make_engine, session_factory

    engine = make_engine(pipeline.settings.sqlalchemy_url)
    box = SecretBox(resolve_encryption_key(pipeline.settings))
    attach_secret_box(engine, box)
    try:
        yield session_factory(engine), box
    finally:
        await engine.dispose()


# --- helpers ------------------------------------------------------------------------------------


async def add_facts(sessions, settings, tenant: str, user: str, n: int = 2) -> None:
    """Analytics rows as the analytics agent writes them: users only as ``user_hash``."""
    uh = user_hash(tenant, user, settings)
    now = int(time.time() * 1000)
    async with sessions() as session:
        for i in range(n):
            rid = uuid.uuid4().hex
            session.add(
                QuestionFact(
                    request_id=rid, tenant_id=tenant, phone_number_id="pn", user_hash=uh,
                    day="2026-12-01", asked_at=now, question=f"q{i}", outcome="ok",
                )
            )  # fmt: skip
            session.add(
                FeedbackFact(
                    feedback_id=f"wamid.{rid}", tenant_id=tenant, request_id=rid, user_hash=uh,
                    day="2026-12-01", at=now, is_positive=True, source="button",
                )
            )  # fmt: skip
        await session.commit()


async def count_facts(sessions, settings, tenant: str, user: str) -> tuple[int, int]:
    hashes = user_hashes(tenant, user, settings)
    async with sessions() as session:
        questions = await session.scalar(
            select(func.count())
            .select_from(QuestionFact)
            .where(QuestionFact.tenant_id == tenant, QuestionFact.user_hash.in_(hashes))
        )
        feedback = await session.scalar(
            select(func.count())
            .select_from(FeedbackFact)
            .where(FeedbackFact.tenant_id == tenant, FeedbackFact.user_hash.in_(hashes))
        )
    return int(questions or 0), int(feedback or 0)


async def links_of(sessions, tenant: str, user: str) -> int:
    async with sessions() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(WhatsAppUserLink)
                .where(WhatsAppUserLink.tenant_id == tenant, WhatsAppUserLink.user_id == user)
            )
            or 0
        )


async def changelog_values(pipeline, key: str) -> list[bytes | None]:
    """Every value the conversations changelog holds for ``key``, in order."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.expiry import partition_of

    table = pipeline.worker.ctx.resources["conversations"]
    await pipeline.worker.app.producer.flush()
    changelog = table.changelog_topic.get_topic_name()
    consumer = AIOKafkaConsumer(bootstrap_servers=pipeline.settings.bootstrap_servers)
    await consumer.start()
    try:
        tp = TopicPartition(changelog, partition_of(key, pipeline.settings.partitions))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes | None] = []
        for _ in range(20):
            batch = await consumer.getmany(tp, timeout_ms=300)
            values += [r.value for r in batch.get(tp, []) if r.key == json.dumps(key).encode()]
            if values and values[-1] is None:
                break
        return values
    finally:
        await consumer.stop()


async def wait_gone(table: Any, key: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while key in table.data:
        assert time.monotonic() < deadline, f"{key} still in the conversations table"
        await asyncio.sleep(0.1)


async def converse(pipeline, bot, user: str) -> None:
    """A conversation with state worth forgetting: a language and a greeting."""
    meta = pipeline.meta(bot)
    await meta.send_text(bot.phone_number_id, user, "/lang es")
    await pipeline.wait_for(user, 1, settle_s=0)
    await meta.send_text(bot.phone_number_id, user, "hello")
    replies = await pipeline.wait_for(user, 2, settle_s=0)
    assert replies[-1]["body"].startswith("¡Hola!")  # the state holds the language


# --- tests --------------------------------------------------------------------------------------


def test_user_hash_is_keyed_per_install_and_tenant(pipeline) -> None:
    from onyx_wa.settings import load_settings
    from tests.pipeline_harness import _fernet_key

    settings = pipeline.settings
    a = user_hash("acme", "15550001111", settings)
    assert a == user_hash("acme", "15550001111", settings) and len(a) == 64
    assert a != user_hash("globex", "15550001111", settings)  # tenants cannot join
    other_install = load_settings(encryption_key=_fernet_key(), data_dir=settings.data_dir)
    assert a != user_hash("acme", "15550001111", other_install)
    # rotation: a new key in front keeps the hash (the oldest key derives it)
    rotated = load_settings(
        encryption_key=f"{_fernet_key()},{settings.encryption_key}", data_dir=settings.data_dir
    )
    assert user_hash("acme", "15550001111", rotated) == a
    assert a in user_hashes("acme", "15550001111", rotated)


async def test_forget_command_removes_state_link_and_facts(pipeline, store):
    sessions, _ = store
    settings = pipeline.settings
    bot = await pipeline.add_bot()
    user, other = "15550009001", "15550009002"
    await pipeline.link_user(bot, user, onyx_user_email="ana@example.com")
    await pipeline.link_user(bot, other, onyx_user_email="bo@example.com")
    await add_facts(sessions, settings, bot.tenant_id, user)
    await add_facts(sessions, settings, bot.tenant_id, other)
    await converse(pipeline, bot, user)
    table = pipeline.worker.ctx.resources["conversations"]
    key = f"{bot.tenant_id}:{user}"
    assert key in table.data

    meta = pipeline.meta(bot)
    forget_id = await meta.send_text(bot.phone_number_id, user, "/forget")
    replies = await pipeline.wait_for(user, 3)
    assert replies[-1]["context"] == forget_id
    assert replies[-1]["body"].startswith("Borré")  # confirmed, in the user's language
    await wait_gone(table, key)
    await asyncio.sleep(1.0)  # the confirmation's send result comes back: no state is re-created
    assert key not in table.data
    values = await changelog_values(pipeline, key)
    assert values and values[0] is not None and values[-1] is None  # state, then tombstone
    assert await links_of(sessions, bot.tenant_id, user) == 0
    assert await count_facts(sessions, settings, bot.tenant_id, user) == (0, 0)
    # nobody else is touched
    assert await links_of(sessions, bot.tenant_id, other) == 1
    assert await count_facts(sessions, settings, bot.tenant_id, other) == (2, 2)

    await meta.send_text(bot.phone_number_id, user, "hello")
    replies = await pipeline.wait_for(user, 4)
    assert replies[-1]["body"].startswith("Hello!")  # a fresh conversation: default language


async def test_admin_delete_user_data_removes_state_link_and_facts(pipeline, store, caplog):
    from admin.app import AdminContext, ForgetPublisher, create_app
    from admin.auth import TokenAuth

    sessions, box = store
    settings = pipeline.settings
    bot = await pipeline.add_bot()
    user, other = "15550009101", "15550009102"
    await pipeline.link_user(bot, user, onyx_user_email="ana@example.com")
    await add_facts(sessions, settings, bot.tenant_id, user, n=3)
    await add_facts(sessions, settings, bot.tenant_id, other, n=1)
    await converse(pipeline, bot, user)
    table = pipeline.worker.ctx.resources["conversations"]
    key = f"{bot.tenant_id}:{user}"
    assert key in table.data
    async with sessions() as session:
        bot_id = await session.scalar(
            select(WhatsAppBot.id).where(WhatsAppBot.phone_number_id == bot.phone_number_id)
        )

    publisher = ForgetPublisher(settings)
    context = AdminContext(
        sessions=sessions,
        box=box,
        auth=TokenAuth.from_setting(f"{OP_TOKEN}=operator,{B_TOKEN}=tenant:other-tenant"),
        forget_publisher=publisher,
        settings=settings,
    )
    runner = web.AppRunner(create_app(context), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/api/v1/bots/{bot_id}/users/{user}/data"
    try:
        async with aiohttp.ClientSession() as http:
            # another tenant's admin: 404, nothing deleted
            headers = {"Authorization": f"Bearer {B_TOKEN}"}
            async with http.delete(url, headers=headers) as resp:
                assert resp.status == 404
            assert await links_of(sessions, bot.tenant_id, user) == 1
            headers = {"Authorization": f"Bearer {OP_TOKEN}"}
            async with http.delete(url, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                report = await resp.json()
            async with http.delete(url, headers=headers) as resp:  # idempotent
                assert resp.status == 202
                again = await resp.json()
    finally:
        await runner.cleanup()
        await publisher.close()

    assert report["user_links"] == 1
    assert (report["question_facts"], report["feedback_facts"]) == (3, 3)
    assert report["conversation"] == "tombstone_requested"
    assert (again["user_links"], again["question_facts"], again["feedback_facts"]) == (0, 0, 0)
    await wait_gone(table, key)
    values = await changelog_values(pipeline, key)
    assert values and values[0] is not None and values[-1] is None
    assert await links_of(sessions, bot.tenant_id, user) == 0
    assert await count_facts(sessions, settings, bot.tenant_id, user) == (0, 0)
    assert await count_facts(sessions, settings, bot.tenant_id, other) == (1, 1)
    # audited, without the phone number
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(AuditLogEntry).where(
                    AuditLogEntry.tenant_id == bot.tenant_id, AuditLogEntry.action == "user.forget"
                )
            )
        ).all()
    assert len(rows) == 2 and all(r.object_type == "user" for r in rows)
    assert all(user not in json.dumps([r.object_id, r.changes]) for r in rows)
    assert user not in caplog.text

    meta = pipeline.meta(bot)
    await meta.send_text(bot.phone_number_id, user, "hello")
    replies = await pipeline.wait_for(user, 3)
    assert replies[-1]["body"].startswith("Hello!")  # a fresh conversation


async def test_admin_delete_user_data_needs_the_broker(store):
    """Without a reachable broker nothing is deleted: 503, and a retry later does it all."""
    from admin.app import AdminContext, create_app
    from admin.auth import TokenAuth

    sessions, box = store

    async def broken(key: str, record: dict[str, Any]) -> None:
        raise ConnectionError("broker down")

    async with sessions() as session:
        bot_id = await session.scalar(select(WhatsAppBot.id).limit(1))
    context = AdminContext(
        sessions=sessions, box=box, auth=TokenAuth.from_setting(f"{OP_TOKEN}=operator"),
        forget_publisher=broken,
    )  # fmt: skip
    runner = web.AppRunner(create_app(context), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.delete(
                f"http://127.0.0.1:{port}/api/v1/bots/{bot_id}/users/15550009999/data",
                headers={"Authorization": f"Bearer {OP_TOKEN}"},
            ) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "unavailable"
    finally:
        await runner.cleanup()


async def test_replaying_a_forgotten_users_events_does_not_recreate_their_facts(pipeline, store):
    """The topics keep a forgotten user's answer requests, results and feedback until retention
    deletes them. Fed to the analytics agent again (a replay), they write nothing of that user;
    another user's events of the same replay are materialized as usual."""
    from prometheus_client import REGISTRY

    from onyx_wa import topics as t
    from onyx_wa.kafka import start_producer
    from schemas.codec import get_codec
    from tests.test_analytics import feedback as feedback_record
    from tests.test_analytics import request as request_record
    from tests.test_analytics import result as result_record

    sessions, _ = store
    settings = pipeline.settings
    bot = await pipeline.add_bot()
    tenant, user, other = bot.tenant_id, "15550009201", "15550009202"
    codec = get_codec()

    def history(sender: str) -> list[tuple[Any, str, dict[str, Any]]]:
        """A question, its answer and a 👍, ten minutes ago (as the topics hold them)."""
        minutes_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 600))
        req = request_record(f"{sender}-{uuid.uuid4().hex[:6]}", tenant=tenant, sender=sender,
                             at=minutes_ago)  # fmt: skip
        fb = feedback_record(f"wamid.{uuid.uuid4().hex}", req, up=True, at=minutes_ago)
        return [
            (t.ANSWER_REQUESTS, "AnswerRequest", req),
            (t.ANSWER_RESULTS, "AnswerResult", result_record(req)),
            (t.FEEDBACK, "Feedback", fb),
        ]

    async def produce(records: list[tuple[Any, str, dict[str, Any]]]) -> None:
        producer = await start_producer(settings)
        try:
            for spec, schema, record in records:
                await producer.send(
                    t.full_name(spec, settings.topic_prefix),
                    codec.encode(schema, record),
                    key=f"{tenant}:{record['chat_id']}".encode(),
                )
            await producer.flush()
        finally:
            await producer.stop()

    def forgotten_count() -> float:
        labels = {"stage": "analytics", "outcome": "forgotten"}
        return REGISTRY.get_sample_value("onyx_wa_stage_events_total", labels) or 0.0

    async def wait_until(check: Any, what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await check():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.2)

    users_history = history(user)
    await produce(users_history)

    async def users_facts_in() -> bool:
        return await count_facts(sessions, settings, tenant, user) == (1, 1)

    await wait_until(users_facts_in, "the analytics agent did not materialize the user's facts")

    meta = pipeline.meta(bot)
    await meta.send_text(bot.phone_number_id, user, "/forget")
    replies = await pipeline.wait_for(user, 1, settle_s=0)
    assert replies and replies[-1]["body"].startswith("I deleted")
    assert await count_facts(sessions, settings, tenant, user) == (0, 0)

    # the replay: the forgotten user's events again, and another user's (not forgotten)
    # The pipeline's answer stage reads onyx.answer.requests too: it answers both replayed
    # requests again, and those answers finish after the forget. They must not re-create a row.
    skipped_before = forgotten_count()
    replayed_at = int(time.time() * 1000)
    await produce(users_history + history(other))

    async def others_reanswer_in() -> bool:  # results of one chat are in order on one partition
        hashes = user_hashes(tenant, other, settings)
        async with sessions() as session:
            answered = await session.scalar(
                select(func.max(QuestionFact.answered_at)).where(
                    QuestionFact.tenant_id == tenant, QuestionFact.user_hash.in_(hashes)
                )
            )
        return (
            await count_facts(sessions, settings, tenant, other) == (1, 1)
            and (answered or 0) >= replayed_at
        )

    async def users_replay_skipped() -> bool:  # its request and its 👍 (the results fold)
        return forgotten_count() - skipped_before >= 2

    await wait_until(others_reanswer_in, "the other user's facts were not materialized")
    await wait_until(users_replay_skipped, "the forgotten user's replayed events were not skipped")
    await asyncio.sleep(2.0)  # the user's own re-answer lands in a batch by now (1 s batches)
    assert await count_facts(sessions, settings, tenant, user) == (0, 0)
