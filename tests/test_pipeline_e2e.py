"""End to end through real sockets: signed webhook → ingress → Kafka → Faust → simulator.

One pipeline (simulator, ingress, one worker with every role) serves the whole module; each test
has its own bot (tenant, number, secrets) so tests never see each other's messages or state.
"""

from __future__ import annotations

import pytest

from streams.addressing import request_id_for
from tests.pipeline_harness import start_pipeline, stop_pipeline

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
async def pipeline(kafka_target, tmp_path_factory):
    import os

    pipe = await start_pipeline(
        kafka_target.bootstrap_servers,
        tmp_path_factory.mktemp("e2e"),
        os.environ.get("ONYX_WA_E2E_DATABASE_URL"),
        broker_flavor="tansu" if kafka_target.embedded else "kafka",
    )
    try:
        yield pipe
    finally:
        await stop_pipeline(pipe)


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

    for _ in range(40):
        results = [
            r
            for r in await read_topic(pipeline.settings, name, 0, 0.5)
            if r["wamid"] in (answer, buttons)
        ]
        if len(results) >= 5:
            break
        await asyncio.sleep(0.25)
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
