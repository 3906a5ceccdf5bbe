"""Reprocessing after a crash versus a duplicate webhook, in the conversation handler.

After a kill -9 the chat's state (with a message's dedupe mark) can be on the changelog while
the answer request it caused is not, and the worker then reads the same wa.inbound record
again. That record must be processed again (the chaos kill-worker scenario lost a question
before this); a *different* record with the same wamid is a duplicate webhook and is dropped.
"""

from __future__ import annotations

import json

from onyx_wa import topics as t
from onyx_wa.settings import load_settings
from ops.replay import DefaultConfig
from sim import meta
from streams import state as st
from streams.app import StageContext
from streams.conversation import ConversationHandler
from streams.normalize import normalize_delivery

PNID = "106540352242922"


def inbound(text: str, wamid: str) -> dict:
    msg = {"from": "15551230000", "id": wamid, "timestamp": "1732500000", "type": "text",
           "text": {"body": text}}  # fmt: skip
    body = json.dumps(meta.notification(PNID, messages=[msg])).encode()
    out = normalize_delivery(body, delivery_id="d", received_at_ms=1, tenant_for={PNID: "acme"})
    [record] = out.messages
    return record


async def handle(state: st.State, record: dict, offset: int) -> list[str]:
    """Topics of what one inbound record emits (and the state it leaves in ``state``)."""
    ctx = StageContext(settings=load_settings(), topics=None)  # type: ignore[arg-type]
    handler = ConversationHandler(ctx, DefaultConfig())
    await handler.on_inbound("acme:15551230000", record, state, offset)
    return [spec.name for spec, _, _ in handler.out]


async def test_the_same_record_again_re_emits_its_request_a_duplicate_webhook_does_not():
    state = st.new_state()
    first = inbound("How many vacation days do I get?", "wamid.Q1")
    assert await handle(state, first, 5) == [t.CLASSIFIED.name, t.ANSWER_REQUESTS.name]
    pending = state["pending"]
    # the worker died before the request left: offset 5 is read again
    assert await handle(state, first, 5) == [t.CLASSIFIED.name, t.ANSWER_REQUESTS.name]
    assert state["pending"] == pending and state["in_offset"] == 5
    # Meta delivers the same message again: a new record, offset 9
    assert await handle(state, first, 9) == []
    assert state["in_offset"] == 5  # a dropped duplicate moves nothing


async def test_a_reprocessed_queued_question_is_not_queued_twice():
    state = st.new_state()
    await handle(state, inbound("First question?", "wamid.Q1"), 5)
    second = inbound("Second question?", "wamid.Q2")
    assert await handle(state, second, 6) == [t.CLASSIFIED.name]  # queued behind the first
    assert len(state["queue"]) == 1
    assert await handle(state, second, 6) == [t.CLASSIFIED.name]
    assert len(state["queue"]) == 1


async def test_without_an_offset_every_repeat_is_a_duplicate():
    """A state rebuild from a replay passes no offsets: plain wamid dedupe, as before."""
    state = st.new_state()
    record = inbound("How do I connect to the VPN?", "wamid.Q3")
    assert await handle_without_offset(state, record) == [t.CLASSIFIED.name, t.ANSWER_REQUESTS.name]
    assert await handle_without_offset(state, record) == []


async def handle_without_offset(state: st.State, record: dict) -> list[str]:
    ctx = StageContext(settings=load_settings(), topics=None)  # type: ignore[arg-type]
    handler = ConversationHandler(ctx, DefaultConfig())
    await handler.on_inbound("acme:15551230000", record, state)
    return [spec.name for spec, _, _ in handler.out]
