"""The egress stage: compose replies from answer results, then send them, throttled and once.

Two agents:
- ``compose``: answer results (keyed tenant:chat) → outbound messages (keyed
  tenant:phone_number_id) with ids ``request_id:part``.
- ``sender``: outbound messages → Graph API. Per business number a token bucket (the bot's
  throughput, default 80/s) and per recipient a pacer; sends of different chats run
  concurrently (bounded), parts of one chat strictly in order. Results go to the outbound-results
  topic keyed tenant:chat (the conversation stage learns the bot's wamids from it); permanent
  failures also go to the DLQ with the original message, replayable.

Never twice: a changelog-backed ``sent`` table keyed by outbound id records ``sending`` before
the Graph call and the wamid after it. A record whose id is already there is skipped — after a
crash, a rebalance or a replay. An id left in ``sending`` by a crash is *not* resent (Meta has no
idempotency key, so a resend could duplicate); it is reported to the DLQ as ``uncertain`` for an
operator to decide. That trades a rare, visible gap for never sending twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import Any

import faust

from egress.errors import ErrorAction, backoff_s
from egress.graph import GraphApiError, GraphClient
from egress.outbound import answer_outbound
from egress.throttle import RecipientPacer, TokenBucket
from onyx_wa import topics as t
from onyx_wa.metrics import DLQ, DUPLICATES, PAUSED_BOTS, SENDS, STAGE_EVENTS, THROTTLE_WAIT
from streams.app import StageContext

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


def outbound_result(
    message: dict[str, Any],
    status: str,
    *,
    wamid: str | None = None,
    error: GraphApiError | None = None,
    error_class: str | None = None,
    attempts: int = 1,
    include_original: bool = False,
) -> dict[str, Any]:
    return {
        "outbound_id": message["outbound_id"],
        "request_id": message["request_id"],
        "tenant_id": message["tenant_id"],
        "phone_number_id": message["phone_number_id"],
        "chat_id": message["chat_id"],
        "status": status,
        "wamid": wamid,
        "error_code": getattr(error, "code", None),
        "error_subcode": getattr(error, "subcode", None),
        "error_message": (str(getattr(error, "message", "") or "") or None) if error else None,
        "error_class": error_class,
        "attempts": attempts,
        "original": message if include_original else None,
        "at": _now_ms(),
    }


class Sender:
    """Sends one outbound message with throttling, retries and pause handling."""

    def __init__(self, ctx: StageContext, sent: Any, *, durable_marks: bool = True) -> None:
        self.ctx = ctx
        # The "sending" mark must be on the broker *before* the Graph call, or a kill -9 right
        # after the call forgets it and the restarted worker sends again (a crash test measured
        # 2 duplicates in 60 without this). Only that record is awaited, not a producer flush.
        self.durable_marks = durable_marks
        self.settings = ctx.settings
        self.sent = sent
        self.graph = GraphClient(
            ctx.settings.graph_base_url,
            ctx.settings.graph_api_version,
            max_connections=ctx.settings.send_concurrency,
        )
        self.buckets: dict[str, TokenBucket] = {}
        self.pacer = RecipientPacer()
        self.paused: set[str] = set()
        self.slots = asyncio.Semaphore(ctx.settings.send_concurrency)
        self.chat_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def mark_sending(self, outbound_id: str) -> None:
        """Record "sending" in the table and wait until its changelog record is acknowledged."""
        mark = {"state": "sending", "at": _now_ms()}
        event = faust.current_event()
        if not self.durable_marks or event is None:
            self.sent[outbound_id] = mark
            return
        self.sent.data[outbound_id] = mark  # the in-memory view, without the buffered write
        await self.sent.send_changelog(event.message.partition, outbound_id, mark)

    def bucket_for(self, phone_number_id: str, rate: float) -> TokenBucket:
        bucket = self.buckets.get(phone_number_id)
        if bucket is None or bucket.rate != rate:
            bucket = self.buckets[phone_number_id] = TokenBucket(rate, burst=max(1.0, rate / 10))
        return bucket

    async def publish(self, message: dict[str, Any], result: dict[str, Any], dlq: bool) -> None:
        key = f"{message['tenant_id']}:{message['chat_id']}".encode()
        await self.ctx.topics.of(t.OUTBOUND_RESULTS).send(key=key, value=result)
        if dlq:
            number_key = f"{message['tenant_id']}:{message['phone_number_id']}".encode()
            await self.ctx.topics.of(t.OUTBOUND_DLQ).send(key=number_key, value=result)
            DLQ.labels(str(result.get("error_code"))).inc()

    async def handle(self, message: dict[str, Any]) -> None:
        """Send one message; the per-chat lock (taken first, FIFO) keeps parts in order."""
        async with self.chat_locks[f"{message['phone_number_id']}:{message['chat_id']}"]:
            await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        outbound_id = message["outbound_id"]
        previous = self.sent.get(outbound_id)
        if previous is not None and previous.get("state") != "retrying":
            DUPLICATES.labels("sender").inc()
            if previous.get("state") == "sending":
                # crashed between marking and recording: never resend, surface it instead
                self.sent[outbound_id] = {"state": "uncertain", "at": _now_ms()}
                await self.publish(
                    message,
                    outbound_result(
                        message, "failed", error_class="uncertain", include_original=True
                    ),
                    dlq=True,
                )
            return
        config = self.ctx.resources["config"]
        bot = await config.bot(message["phone_number_id"])
        if bot is None or not getattr(bot, "enabled", True):
            self.sent[outbound_id] = {"state": "failed", "reason": "no bot", "at": _now_ms()}
            await self.publish(
                message,
                outbound_result(message, "failed", error_class="permanent", include_original=True),
                dlq=True,
            )
            return
        payload = json.loads(message["payload_json"])
        await self._send_with_retries(message, payload, bot)

    async def _send_with_retries(
        self, message: dict[str, Any], payload: dict[str, Any], bot: Any
    ) -> None:
        outbound_id = message["outbound_id"]
        pnid = message["phone_number_id"]
        rate = float(getattr(bot, "throughput_per_s", None) or 80)
        attempt = 0
        while True:
            attempt += 1
            while pnid in self.paused:
                await asyncio.sleep(self.settings.pause_recheck_s)
                self.paused.discard(pnid)  # re-probe: the next failure pauses again
                PAUSED_BOTS.set(len(self.paused))
            if self.settings.send_throttle:
                waited = await self.bucket_for(pnid, rate).acquire()
                if message["kind"] != "read_typing":
                    waited += await self.pacer.acquire(f"{pnid}:{message['chat_id']}")
                THROTTLE_WAIT.observe(waited)
            await self.mark_sending(outbound_id)
            try:
                async with self.slots:
                    if message["kind"] == "read_typing":
                        await self.graph.mark_read(
                            pnid,
                            bot.access_token,
                            payload["message_id"],
                            typing="typing_indicator" in payload,
                        )
                        wamid = None
                    else:
                        wamid = await self.graph.send_message(pnid, bot.access_token, payload)
            except GraphApiError as err:
                # Meta answered with an error: nothing was sent, a retry cannot duplicate.
                # (A timeout is retried too; Meta documents no idempotency key, so that is the
                # one case where a duplicate is possible, and it is counted.)
                self.sent[outbound_id] = {"state": "retrying", "at": _now_ms()}
                SENDS.labels("error", str(err.code)).inc()
                if err.action is ErrorAction.RETRY and attempt < self.settings.send_max_attempts:
                    await asyncio.sleep(backoff_s(err.code, attempt))
                    continue
                if err.action is ErrorAction.PAUSE:
                    log.error("pausing sends for number %s: Graph API code %s", pnid, err.code)
                    self.paused.add(pnid)
                    PAUSED_BOTS.set(len(self.paused))
                    await self.publish(
                        message,
                        outbound_result(
                            message, "failed", error=err, error_class="stop", attempts=attempt
                        ),
                        dlq=False,
                    )
                    continue
                error_class = "permanent" if err.action is ErrorAction.PERMANENT else "retry"
                self.sent[outbound_id] = {"state": "failed", "code": err.code, "at": _now_ms()}
                if message["kind"] == "read_typing":
                    return  # a lost typing indicator is not worth a DLQ entry
                await self.publish(
                    message,
                    outbound_result(
                        message,
                        "failed",
                        error=err,
                        error_class=error_class,
                        attempts=attempt,
                        include_original=True,
                    ),
                    dlq=True,
                )
                return
            self.sent[outbound_id] = {"state": "sent", "wamid": wamid, "at": _now_ms()}
            if wamid:
                # statuses arrive keyed like outbound messages (tenant:number): same partition
                self.sent[f"w:{wamid}"] = {
                    "outbound_id": outbound_id,
                    "request_id": message["request_id"],
                    "chat_id": message["chat_id"],
                    "status": "sent",
                }
            SENDS.labels("sent", "0").inc()
            if message["kind"] != "read_typing":
                await self.publish(
                    message,
                    outbound_result(message, "sent", wamid=wamid, attempts=attempt),
                    dlq=False,
                )
            return

    async def aclose(self) -> None:
        await self.graph.aclose()


STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 3, "failed": 4}


def status_result(message: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The OutboundResult for a delivery status of one of our messages."""
    errors = status.get("errors") or []
    first = errors[0] if errors else {}
    return {
        "outbound_id": message["outbound_id"],
        "request_id": message["request_id"],
        "tenant_id": status["tenant_id"],
        "phone_number_id": status["phone_number_id"],
        "chat_id": message["chat_id"],
        "status": status["status"] if status["status"] in STATUS_RANK else "sent",
        "wamid": status["message_id"],
        "error_code": first.get("code"),
        "error_subcode": None,
        "error_message": first.get("message") or first.get("title"),
        "error_class": classify_code(first.get("code")).value if first else None,
        "attempts": 1,
        "original": None,
        "at": _now_ms(),
    }


def classify_code(code: int | None) -> ErrorAction:
    from egress.errors import classify

    return classify(code, None)


def register(app: faust.App, ctx: StageContext) -> None:
    settings = ctx.settings
    sent = app.Table(
        "sent",
        default=None,
        partitions=settings.partitions,
        key_type=str,  # app defaults: raw keys, JSON values
    )
    sender = Sender(ctx, sent)
    ctx.resources["sender"] = sender
    results = ctx.topics.of(t.ANSWER_RESULTS)
    outbound = ctx.topics.of(t.OUTBOUND)

    @app.agent(results, name="compose")
    async def compose(stream: faust.StreamT) -> None:
        async for result in stream:
            key = f"{result['tenant_id']}:{result['phone_number_id']}".encode()
            for record in answer_outbound(result, top_n=settings.sources_top_n):
                await outbound.send(key=key, value=record)
            STAGE_EVENTS.labels("compose", result["status"]).inc()

    statuses = ctx.topics.of(t.STATUSES)
    outbound_results = ctx.topics.of(t.OUTBOUND_RESULTS)

    @app.agent(statuses, name="statuses")
    async def track_statuses(stream: faust.StreamT) -> None:
        """Delivery statuses close the loop. They arrive out of order and duplicated: a status
        only ever moves a message forward (a late "delivered" never overwrites "read")."""
        async for status in stream:
            key = f"w:{status['message_id']}"
            known = sent.get(key)
            if known is None:
                STAGE_EVENTS.labels("statuses", "unknown_message").inc()
                continue
            rank = STATUS_RANK.get(status["status"], 0)
            if rank <= STATUS_RANK.get(known.get("status", "sent"), 1):
                DUPLICATES.labels("statuses").inc()
                continue
            sent[key] = {**known, "status": status["status"]}
            result = status_result(known, status)
            chat_key = f"{status['tenant_id']}:{known['chat_id']}".encode()
            await outbound_results.send(key=chat_key, value=result)
            if status["status"] == "failed":
                SENDS.labels("failed_status", str(result["error_code"])).inc()
            STAGE_EVENTS.labels("statuses", status["status"]).inc()

    @app.agent(outbound, name="sender")
    async def send(stream: faust.StreamT) -> None:
        pending: set[asyncio.Task[None]] = set()
        async for event in stream.noack().events():
            message = event.value

            async def run(message: dict[str, Any] = message, event: Any = event) -> None:
                try:
                    await sender.handle(message)
                except Exception:
                    log.exception("sender failed on %s", message.get("outbound_id"))
                finally:
                    await stream.ack(event)

            task = asyncio.ensure_future(run())
            pending.add(task)
            task.add_done_callback(pending.discard)
            while len(pending) >= settings.send_concurrency:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
