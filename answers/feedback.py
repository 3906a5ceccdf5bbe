"""Forward 👍/👎 feedback to Onyx (``create-chat-message-feedback``) for bots answered by Onyx.

Why a separate agent on the feedback topic: feedback must not wait behind answers, and a slow or
failing Onyx must not stall the conversation stage that produced the event. The Onyx message id
travels in the event (the conversation state maps the tapped WhatsApp message to it).

Delivery is at-least-once; Onyx stores one row per call, so ids already forwarded by this
worker are remembered (bounded) and skipped. A failure after the client's retries is logged and
counted, never retried forever: feedback is a signal, not a transaction. A database error in
the bot lookup is retried in place first (``streams.db_retry``), like the other stages.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import faust

from onyx_wa import topics as t
from onyx_wa.metrics import FEEDBACK_FORWARDED
from store.db import is_transient_db_error
from streams.app import StageContext
from streams.db_retry import retry_db_errors

log = logging.getLogger(__name__)

REMEMBERED = 10_000


class FeedbackForwarder:
    """Decides whether a feedback event goes to Onyx, and sends it once."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self._done: OrderedDict[str, None] = OrderedDict()

    async def forward(self, event: dict[str, Any]) -> str:
        """Forward ``event``; returns the outcome label (also counted in metrics)."""
        outcome = await self._forward(event)
        FEEDBACK_FORWARDED.labels(outcome).inc()
        return outcome

    async def _forward(self, event: dict[str, Any]) -> str:
        from answers.onyx_client import OnyxRequestError

        if event["feedback_id"] in self._done:
            return "duplicate"
        if event.get("onyx_message_id") is None:
            return "no_onyx_message"  # local backend answers, or an answer Onyx never gave
        config = self.ctx.resources["config"]
        try:
            # a database outage delays the feedback (about two minutes of retries) before it
            # gives up: it used to drop it at the first refused lookup
            bot = await retry_db_errors("feedback", lambda: config.bot(event["phone_number_id"]))
        except Exception as exc:
            if not is_transient_db_error(exc):
                raise
            log.error(
                "feedback for tenant %s dropped: the database is still failing (%r)",
                event["tenant_id"],
                exc,
            )
            return "database_error"
        if bot is None or bot.tenant_id != event["tenant_id"]:
            return "unknown_bot"
        if bot.answer_backend != "onyx" or not bot.onyx_base_url or not bot.onyx_api_key:
            return "not_onyx"
        service = self.ctx.resources["answer_service"]
        client = service.onyx_backend(bot)
        try:
            await client.send_feedback(
                int(event["onyx_message_id"]), bool(event["is_positive"]), event.get("text")
            )
        except OnyxRequestError as exc:
            log.warning("feedback for tenant %s not forwarded: %s", event["tenant_id"], exc.code)
            return exc.code
        self._done[event["feedback_id"]] = None
        while len(self._done) > REMEMBERED:
            self._done.popitem(last=False)
        return "forwarded"


def register(app: faust.App, ctx: StageContext) -> None:
    forwarder = FeedbackForwarder(ctx)
    ctx.resources["feedback_forwarder"] = forwarder

    @app.agent(ctx.topics.of(t.FEEDBACK), name="feedback-to-onyx")
    async def feedback_to_onyx(stream: faust.StreamT) -> None:
        async for record in stream.events():
            event = record.value
            try:
                await forwarder.forward(event)
            except Exception:  # never stall the partition on one event
                log.exception("feedback forwarding failed")
                FEEDBACK_FORWARDED.labels("error").inc()
