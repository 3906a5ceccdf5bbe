"""End to end through real sockets: signed webhook → ingress → Kafka → Faust → simulator.

One pipeline (simulator, ingress, one worker with every role) serves the whole module; each test
has its own bot (tenant, number, secrets) so tests never see each other's messages or state.
"""

from __future__ import annotations

import pytest

from onyx_wa.topics import INBOUND
from streams.addressing import request_id_for
from tests.pipeline_harness import module_pipeline

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
async def pipeline(kafka_target, tmp_path_factory):
    async for pipe in module_pipeline(kafka_target, tmp_path_factory.mktemp("e2e")):
        yield pipe


async def test_question_gets_a_cited_threaded_reply(pipeline):
    bot = await pipeline.add_bot()
    user = "15550000001"
    wamid = await pipeline.meta(bot).send_text(
        bot.phone_number_id, user, "How many vacation days do I get?"
    )
    replies = await pipeline.wait_for(user, 2)
    texts = [r for r in replies if r["type"] == "text"]
    assert len(texts) == 1, replies
    reply = texts[0]
    assert reply["context"] == wamid
    assert "[1]" in reply["body"] and "Sources" in reply["body"]
    assert reply["phone_number_id"] == bot.phone_number_id
    [buttons] = [r for r in replies if r["type"] == "interactive"]
    ids = [b["reply"]["id"] for b in buttons["payload"]["interactive"]["action"]["buttons"]]
    ref = request_id_for(bot.tenant_id, wamid)
    assert ids == [f"fb:{bot.tenant_id}:{ref}:up", f"fb:{bot.tenant_id}:{ref}:down"]


async def test_duplicate_deliveries_are_answered_once(pipeline):
    bot = await pipeline.add_bot()
    user = "15550000002"
    meta = pipeline.meta(bot)
    body, wamid = meta.build_text_body(bot.phone_number_id, user, "How do I connect to the VPN?")
    for _ in range(3):
        assert await meta.post(body) == 200
    replies = await pipeline.wait_for(user, 2, settle_s=3.0)
    assert [r["context"] for r in replies if r["type"] == "text"] == [wamid]
    assert len(replies) == 2  # the answer and its feedback buttons, once


async def test_commands_and_greetings_answer_locally(pipeline):
    bot = await pipeline.add_bot()
    user = "15550000003"
    meta = pipeline.meta(bot)
    help_id = await meta.send_text(bot.phone_number_id, user, "/help")
    replies = await pipeline.wait_for(user, 1)
    assert replies[0]["context"] == help_id and "/reset" in replies[0]["body"]
    hi = await meta.send_text(bot.phone_number_id, user, "hello")
    replies = await pipeline.wait_for(user, 2)
    assert any(r["context"] == hi for r in replies)


async def test_follow_up_uses_the_conversation(pipeline):
    bot = await pipeline.add_bot()
    user = "15550000004"
    meta = pipeline.meta(bot)
    await meta.send_text(bot.phone_number_id, user, "How many vacation days do I get?")
    await pipeline.wait_for(user, 2)
    follow = await meta.send_text(bot.phone_number_id, user, "and how do I request them?")
    replies = await pipeline.wait_for(user, 4)
    assert any(r["context"] == follow for r in replies)
    table = pipeline.worker.ctx.resources["conversations"]
    state = table.get(f"{bot.tenant_id}:{user}".encode()) or table.get(f"{bot.tenant_id}:{user}")
    assert state is not None and len(state["turns"]) == 4


async def test_group_message_mentioning_the_bot_is_answered_in_the_group(pipeline):
    bot = await pipeline.add_bot()
    group = "120363000000000777"
    meta = pipeline.meta(bot)
    wamid = await meta.send_text(
        bot.phone_number_id,
        "15550000005",
        f"@{bot.display_phone_number} how do I report a security incident?",
        group_id=group,
        mentions=[bot.display_phone_number],
    )
    replies = await pipeline.wait_for(group, 1, settle_s=2.0)
    assert len(replies) == 1 and replies[0]["context"] == wamid  # no buttons in groups
    assert replies[0]["payload"]["recipient_type"] == "group"


async def test_feedback_tap_is_acknowledged(pipeline):
    bot = await pipeline.add_bot()
    user = "15550000006"
    meta = pipeline.meta(bot)
    question = await meta.send_text(bot.phone_number_id, user, "How do I connect to the VPN?")
    await pipeline.wait_for(user, 2)
    ref = request_id_for(bot.tenant_id, question)
    tap = await meta.send_button_reply(
        bot.phone_number_id, user, f"fb:{bot.tenant_id}:{ref}:up", "👍 Helpful"
    )
    replies = await pipeline.wait_for(user, 3)
    assert any(r["context"] == tap for r in replies)


async def test_statuses_move_forward_only_and_failures_carry_their_code(pipeline):
    from onyx_wa import topics as t
    from sim import meta as m
    from tests.test_ingress_http import read_topic

    bot = await pipeline.add_bot()
    user = "15550000008"
    sender = pipeline.meta(bot)
    await sender.send_text(bot.phone_number_id, user, "How do I connect to the VPN?")
    replies = await pipeline.wait_for(user, 2)
    answer, buttons = (r["id"] for r in sorted(replies, key=lambda r: r["type"] != "text"))
    for status in ("delivered", "read", "delivered", "read"):  # late and duplicate ones too
        assert (
            await sender.send_statuses(bot.phone_number_id, [m.status(answer, status, user)]) == 200
        )
    failed = m.status(
        buttons, "failed", user, errors=[{"code": 131047, "title": "Re-engagement message"}]
    )
    assert await sender.send_statuses(bot.phone_number_id, [failed]) == 200
    name = t.full_name(t.OUTBOUND_RESULTS, pipeline.settings.topic_prefix)
    import asyncio

    async def results_so_far() -> list[dict]:
        return [
            r
            for r in await read_topic(pipeline.settings, name, 0, 0.5)
            if r["wamid"] in (answer, buttons)
        ]

    for _ in range(40):
        results = await results_so_far()
        # both terminal: "read" for the answer (a "delivered" processed after it is dropped, so
        # waiting for a fifth result could take the whole 30 s) and "failed" for the buttons
        if {(answer, "read"), (buttons, "failed")} <= {(r["wamid"], r["status"]) for r in results}:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # anything still in flight (a backwards move) must show up below
    results = await results_so_far()
    seen = [r["status"] for r in results if r["wamid"] == answer]
    # separate webhooks can be processed out of order (raw records are keyed by delivery id):
    # "delivered" may arrive after "read" and is then dropped; nothing ever moves backwards
    assert seen in (["sent", "delivered", "read"], ["sent", "read"]), seen
    [fail] = [r for r in results if r["wamid"] == buttons and r["status"] == "failed"]
    assert fail["error_code"] == 131047 and fail["error_class"] == "permanent"


async def test_language_reset_and_opt_out_commands(pipeline):
    bot = await pipeline.add_bot()
    user = "15550000009"
    meta = pipeline.meta(bot)
    await meta.send_text(bot.phone_number_id, user, "/lang es")
    await pipeline.wait_for(user, 1)
    await meta.send_text(bot.phone_number_id, user, "hola")
    replies = await pipeline.wait_for(user, 2)
    assert replies[0]["body"] == "Idioma cambiado a es." and replies[1]["body"].startswith("¡Hola!")
    await meta.send_text(bot.phone_number_id, user, "/stop")
    await pipeline.wait_for(user, 3)
    await meta.send_text(bot.phone_number_id, user, "How do I connect to the VPN?")
    assert len(await pipeline.wait_for(user, 4, timeout_s=3, settle_s=0)) == 3  # opted out: silence
    await meta.send_text(bot.phone_number_id, user, "/start")
    assert len(await pipeline.wait_for(user, 4)) == 4


async def _onyx_bot(pipeline, key: str, **overrides):
    return await pipeline.add_bot(
        answer_backend="onyx", onyx_base_url=pipeline.onyx_url, onyx_api_key=key, **overrides
    )


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


async def test_onyx_backend_session_persona_filters_feedback_and_tenant_keys(pipeline):
    """Persona and document sets come from the chat config; the follow-up reuses the Onyx
    session; a 👍 tap reaches Onyx's feedback endpoint; each tenant's calls carry its own key."""
    import asyncio

    bot = await _onyx_bot(pipeline, "key-tenant-a")
    other = await _onyx_bot(pipeline, "key-tenant-b")
    user, other_user = "15550000010", "15550000011"
    await pipeline.add_chat_config(
        bot, match_kind="wa_id", match_value=user, persona_id=1, document_sets=["hr"]
    )
    meta = pipeline.meta(bot)
    question = await meta.send_text(bot.phone_number_id, user, "How many vacation days do I get?")
    replies = await pipeline.wait_for(user, 2)
    [answer] = [r for r in replies if r["type"] == "text"]
    assert "25 vacation days" in answer["body"] and "[1]" in answer["body"], answer["body"]
    await meta.send_text(bot.phone_number_id, user, "Do unused vacation days carry over?")
    await pipeline.wait_for(user, 4)
    await pipeline.meta(other).send_text(other.phone_number_id, other_user, "Vacation days?")
    await pipeline.wait_for(other_user, 1)

    sends = [
        r
        for r in await pipeline.onyx("GET", "/_fake/requests")
        if r["path"] == "/api/chat/send-chat-message" and r["key_sha256"] == _sha("key-tenant-a")
    ]
    first, follow = (r["body"] for r in sends[-2:])
    assert first["chat_session_info"] == {"persona_id": 1}
    assert first["internal_search_filters"]["document_set"] == ["hr"]
    assert follow["chat_session_id"] and "chat_session_info" not in follow
    session = await pipeline.onyx("GET", f"/_fake/sessions/{follow['chat_session_id']}")
    assert session["persona_id"] == 1
    assert follow["parent_message_id"] in [m["message_id"] for m in session["messages"]]
    b_calls = [
        r for r in await pipeline.onyx("GET", "/_fake/requests")
        if r["key_sha256"] == _sha("key-tenant-b")
    ]  # fmt: skip
    assert b_calls and all(
        "Vacation days?" == r["body"]["message"] for r in b_calls if r["body"]
    )  # tenant B's only question went with B's key, and none of A's with it

    ref = request_id_for(bot.tenant_id, question)
    await meta.send_button_reply(bot.phone_number_id, user, f"fb:{bot.tenant_id}:{ref}:up", "👍")
    for _ in range(100):
        feedback = await pipeline.onyx("GET", "/_fake/feedback")
        if feedback:
            break
        await asyncio.sleep(0.1)
    first_message = [m for m in session["messages"] if m["type"] == "assistant"][0]["message_id"]
    assert {"chat_message_id": first_message, "is_positive": True, "feedback_text": None} in (
        feedback
    )


async def test_linked_user_asks_with_their_own_onyx_identity(pipeline):
    """A user an admin linked to an Onyx account is answered with that account's key (their
    document access); an unlinked user of the same bot with the bot's key."""
    bot = await _onyx_bot(pipeline, "key-bot-linked")
    linked, unlinked = "15550000016", "15550000017"
    await pipeline.link_user(
        bot, linked, onyx_user_email="ana@example.com", onyx_api_key="key-user-ana"
    )
    meta = pipeline.meta(bot)
    await meta.send_text(bot.phone_number_id, linked, "How many vacation days do I get?")
    await meta.send_text(bot.phone_number_id, unlinked, "How do I connect to the VPN?")
    for user in (linked, unlinked):
        got = await pipeline.wait_for(user, 2)
        assert len(got) >= 2, f"{user} got {len(got)} of 2 messages in 30 s: {got}"
    sends = {
        r["body"]["message"]: r["key_sha256"]
        for r in await pipeline.onyx("GET", "/_fake/requests")
        if r["path"] == "/api/chat/send-chat-message"
        and r["key_sha256"] in (_sha("key-user-ana"), _sha("key-bot-linked"))
    }
    assert sends == {
        "How many vacation days do I get?": _sha("key-user-ana"),
        "How do I connect to the VPN?": _sha("key-bot-linked"),
    }


async def test_onyx_failure_becomes_a_polite_reply_not_silence(pipeline):
    bot = await _onyx_bot(pipeline, "key-failing")
    user = "15550000012"
    await pipeline.onyx("POST", "/_fake/faults", {"status": 500})
    try:
        wamid = await pipeline.meta(bot).send_text(
            bot.phone_number_id, user, "How many vacation days do I get?"
        )
        replies = await pipeline.wait_for(user, 1, timeout_s=60)
    finally:
        await pipeline.onyx("DELETE", "/_fake/faults")
    assert len(replies) == 1 and replies[0]["context"] == wamid
    assert "couldn't reach the knowledge base" in replies[0]["body"]


async def test_tenant_quota_answers_with_a_limit_message(pipeline):
    bot = await pipeline.add_bot(tenant_questions_per_minute=2)
    meta = pipeline.meta(bot)
    users = ["15550000013", "15550000014", "15550000015"]
    for user in users:
        await meta.send_text(bot.phone_number_id, user, "How do I connect to the VPN?")
        await pipeline.wait_for(user, 1, settle_s=0)
    third = await pipeline.wait_for(users[2], 1)
    assert len(third) == 1 and "a lot of questions" in third[0]["body"]
    for user in users[:2]:
        assert any("[1]" in r.get("body", "") for r in await pipeline.sent_to(user))


async def test_idle_conversation_is_expired_from_the_table_and_its_changelog(pipeline):
    """The expiry sweep drops an idle chat locally and tombstones it in the changelog (so a
    restart's recovery cannot bring it back); the chat's next message starts fresh."""
    import json
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.expiry import expire_idle, owned_partitions, partition_of

    bot = await pipeline.add_bot()
    user = "15550000018"
    meta = pipeline.meta(bot)
    await meta.send_text(bot.phone_number_id, user, "/lang es")
    await pipeline.wait_for(user, 1, settle_s=0)
    await meta.send_text(bot.phone_number_id, user, "hello")
    [_, greeting] = await pipeline.wait_for(user, 2)
    assert greeting["body"].startswith("¡Hola!")  # the state holds the language

    worker = pipeline.worker
    table = worker.ctx.resources["conversations"]
    key = f"{bot.tenant_id}:{user}"
    assert key in table.data
    inbound = worker.ctx.topics.name(INBOUND)
    owned = owned_partitions(worker.app, inbound)
    assert partition_of(key, pipeline.settings.partitions) in owned
    now = int(time.time() * 1000)
    still_active = await expire_idle(
        table, now_ms=now, idle_ms=3_600_000, partitions=pipeline.settings.partitions,
        owned=owned, keys=[key],
    )  # fmt: skip
    assert still_active == 0 and key in table.data
    expired = await expire_idle(
        table, now_ms=now + 10_000, idle_ms=1, partitions=pipeline.settings.partitions,
        owned=owned, keys=[key],
    )  # fmt: skip
    assert expired == 1 and key not in table.data
    await worker.app.producer.flush()

    changelog = table.changelog_topic.get_topic_name()
    consumer = AIOKafkaConsumer(bootstrap_servers=pipeline.settings.bootstrap_servers)
    await consumer.start()
    try:
        tp = TopicPartition(changelog, partition_of(key, pipeline.settings.partitions))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values = []
        for _ in range(20):
            batch = await consumer.getmany(tp, timeout_ms=300)
            values += [r.value for r in batch.get(tp, []) if r.key == json.dumps(key).encode()]
            if values and values[-1] is None:
                break
    finally:
        await consumer.stop()
    assert values and values[0] is not None and values[-1] is None  # state, then tombstone

    await meta.send_text(bot.phone_number_id, user, "hello")
    replies = await pipeline.wait_for(user, 3)
    assert replies[-1]["body"].startswith("Hello!")  # a fresh conversation: default language


async def test_invalid_payloads_land_in_the_invalid_topic_and_processing_continues(pipeline):
    """Bytes that are not Avro, a delivery whose body is not JSON and one whose message lacks
    its id go to the invalid topic with a reason and the raw bytes; the partition keeps
    flowing: a question sent right after them is answered."""
    import time
    import uuid

    from onyx_wa import topics as t
    from onyx_wa.kafka import start_producer
    from schemas.codec import get_codec
    from sim import meta as m
    from tests.test_ingress_http import read_topic

    bot = await pipeline.add_bot()
    user = "15550000019"
    settings = pipeline.settings
    raw_topic = t.full_name(t.RAW, settings.topic_prefix)
    marker = uuid.uuid4().hex

    def raw(body: bytes) -> bytes:
        return get_codec().encode(
            "RawWebhook",
            {
                "delivery_id": f"{marker}-{uuid.uuid4().hex[:6]}",
                "received_at": int(time.time() * 1000),
                "body": body,
                "headers": {"Content-Type": "application/json"},
                "tenant_ids": [bot.tenant_id],
                "phone_number_ids": [bot.phone_number_id],
                "routed": True,
            },
        )

    no_id = m.text_message(user, "a message without its id")
    no_id.pop("id")
    bad = [
        b"\x00\x01garbage-" + marker.encode(),
        raw(b'{"object": "whatsapp_business_account", "entry": [' + marker.encode()),
        raw(m.serialise(m.notification(bot.phone_number_id, messages=[no_id]))),
    ]
    question = m.text_message(user, "How do I connect to the VPN?")
    good = raw(m.serialise(m.notification(bot.phone_number_id, messages=[question])))
    producer = await start_producer(settings)
    try:  # one key, so one partition: the question comes after the bad records
        for value in [*bad, good]:
            await producer.send_and_wait(raw_topic, value, key=marker.encode())
    finally:
        await producer.stop()
    replies = await pipeline.wait_for(user, 2)
    assert any("[1]" in r.get("body", "") for r in replies)

    invalid_topic = t.full_name(t.INVALID, settings.topic_prefix)
    found = []
    for _ in range(20):
        found = [
            e for e in await read_topic(settings, invalid_topic, 0, 0.5)
            if marker.encode() in (e["raw"] or b"") or marker in (e.get("delivery_id") or "")
        ]  # fmt: skip
        if len(found) >= 3:
            break
    assert len(found) == 3, found
    assert all(e["reason"] and e["raw"] for e in found)
    assert {e["stage"] for e in found} == {"preprocess"}
    assert any(e["raw"] == bad[0] for e in found)  # the undecodable bytes are kept as they were


async def test_a_database_outage_delays_a_question_but_never_parks_it(pipeline, monkeypatch):
    """The chat's settings cannot be read twice in a row (the database refuses connections):
    the conversation stage retries the event in place, the question is answered once, and
    nothing of it lands in the invalid topic. Before, it was parked there unanswered, and its
    dedupe mark, left in the memory store's state, made a replay look like a duplicate."""
    from sqlalchemy.exc import OperationalError

    from onyx_wa import topics as t
    from onyx_wa.metrics import DB_RETRIES
    from tests.test_ingress_http import read_topic

    bot = await pipeline.add_bot()
    user = "15550000031"
    config = pipeline.worker.ctx.resources["config"]
    real_chat = config.chat
    refused: list[str] = []

    async def chat(bot_view, chat_id, is_group):
        if chat_id == user and len(refused) < 2:
            refused.append(chat_id)
            raise OperationalError("SELECT chats", {}, ConnectionRefusedError(111, "refused"))
        return await real_chat(bot_view, chat_id, is_group)

    monkeypatch.setattr(config, "chat", chat)
    retries = DB_RETRIES.labels("conversation")._value.get()
    wamid = await pipeline.meta(bot).send_text(bot.phone_number_id, user, "Where is the VPN guide?")
    replies = await pipeline.wait_for(user, 2, settle_s=2.0)
    texts = [r for r in replies if r["type"] == "text"]
    assert len(refused) == 2, "the outage was never injected"
    assert len(texts) == 1 and texts[0]["context"] == wamid, replies
    assert DB_RETRIES.labels("conversation")._value.get() == retries + 2
    invalid = await read_topic(
        pipeline.settings, t.full_name(t.INVALID, pipeline.settings.topic_prefix), 0, 1.0
    )
    assert not [
        e for e in invalid if user in (e.get("key") or "") or wamid.encode() in (e["raw"] or b"")
    ]


async def test_a_database_outage_delays_an_onyx_answer_instead_of_failing_it(pipeline, monkeypatch):
    """The answer stage's linked-user lookup (before the Onyx call) is refused twice: the
    request is tried again and the user gets Onyx's answer, not the polite failure it got
    before, and Onyx is asked once."""
    from sqlalchemy.exc import OperationalError

    from onyx_wa.metrics import DB_RETRIES

    bot = await _onyx_bot(pipeline, "key-db-outage")
    user = "15550000032"
    config = pipeline.worker.ctx.resources["config"]
    real_lookup = config.linked_onyx_key
    refused: list[str] = []

    async def linked_onyx_key(bot_view, sender_id):
        if sender_id == user and len(refused) < 2:
            refused.append(sender_id)
            raise OperationalError("SELECT links", {}, ConnectionRefusedError(111, "refused"))
        return await real_lookup(bot_view, sender_id)

    monkeypatch.setattr(config, "linked_onyx_key", linked_onyx_key)
    retries = DB_RETRIES.labels("answers")._value.get()
    await pipeline.meta(bot).send_text(bot.phone_number_id, user, "How many vacation days?")
    replies = await pipeline.wait_for(user, 2, settle_s=2.0)
    [answer] = [r for r in replies if r["type"] == "text"]
    assert len(refused) == 2, "the outage was never injected"
    assert "25 vacation days" in answer["body"], answer["body"]
    assert DB_RETRIES.labels("answers")._value.get() == retries + 2
    sends = [
        r for r in await pipeline.onyx("GET", "/_fake/requests")
        if r["path"] == "/api/chat/send-chat-message" and r["key_sha256"] == _sha("key-db-outage")
    ]  # fmt: skip
    assert len(sends) == 1, sends


async def test_a_database_outage_delays_feedback_instead_of_dropping_it(pipeline, monkeypatch):
    """The feedback agent's bot lookup is refused twice: the 👎 still reaches Onyx. Before, the
    first refused lookup dropped it (logged as a failed forward)."""
    import asyncio
    import dataclasses

    from sqlalchemy.exc import OperationalError

    bot = await _onyx_bot(pipeline, "key-db-feedback")
    user = "15550000033"
    meta = pipeline.meta(bot)
    question = await meta.send_text(bot.phone_number_id, user, "How many vacation days do I get?")
    await pipeline.wait_for(user, 2)
    forwarder = pipeline.worker.ctx.resources["feedback_forwarder"]
    config = forwarder.ctx.resources["config"]
    refused: list[str] = []

    class RefusingTwice:
        """The feedback agent's view of the configuration: its first two lookups fail."""

        def __getattr__(self, name: str):
            return getattr(config, name)

        async def bot(self, phone_number_id: str):
            if len(refused) < 2:
                refused.append(phone_number_id)
                raise OperationalError("SELECT bots", {}, ConnectionRefusedError(111, "refused"))
            return await config.bot(phone_number_id)

    resources = {**forwarder.ctx.resources, "config": RefusingTwice()}
    monkeypatch.setattr(forwarder, "ctx", dataclasses.replace(forwarder.ctx, resources=resources))
    before = await pipeline.onyx("GET", "/_fake/feedback")
    ref = request_id_for(bot.tenant_id, question)
    await meta.send_button_reply(bot.phone_number_id, user, f"fb:{bot.tenant_id}:{ref}:down", "👎")
    for _ in range(100):
        feedback = await pipeline.onyx("GET", "/_fake/feedback")
        if len(feedback) > len(before):
            break
        await asyncio.sleep(0.1)
    assert len(refused) == 2, "the outage was never injected"
    assert [f["is_positive"] for f in feedback if f not in before] == [False]
