"""Preprocess: one raw webhook delivery → normalized inbound messages, statuses, invalid events.

Why here and stateless: the raw topic is keyed by delivery id, so duplicates of one WhatsApp
message can sit in different partitions. Deduplication therefore happens one hop later, in the
conversation stage, whose input is keyed ``tenant:chat`` (every copy of a message lands in the
same partition there). This stage only parses, so it can be replayed and scaled freely.
Parsing never raises: what cannot be parsed becomes an InvalidEvent with the reason and bytes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import faust

from onyx_wa import topics as t
from onyx_wa.metrics import STAGE_EVENTS, STAGE_LATENCY
from schemas.codec import CodecError, get_codec
from streams.app import StageContext
from streams.normalize import chat_key, normalize_delivery, number_key

log = logging.getLogger(__name__)


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def tenant_map(raw: dict[str, Any]) -> dict[str, str]:
    """phone_number_id → tenant as the ingress recorded it (parallel lists; "" = unrouted)."""
    numbers = list(raw.get("phone_number_ids") or [])
    tenants = list(raw.get("tenant_ids") or [])
    if len(numbers) == len(tenants):
        return {n: tn for n, tn in zip(numbers, tenants, strict=True) if tn}
    if len(set(tenants)) == 1 and tenants:
        return {n: tenants[0] for n in numbers}
    return {}


def invalid_record(stage: str, reason: str, raw: bytes, source_topic: str) -> dict[str, Any]:
    return {
        "delivery_id": None,
        "stage": stage,
        "reason": reason[:500],
        "tenant_id": None,
        "source_topic": source_topic,
        "raw": raw,
        "at": int(time.time() * 1000),
    }


Send = Callable[[t.TopicSpec, bytes, dict[str, Any]], Awaitable[None]]
SendInvalid = Callable[[bytes, dict[str, Any]], Awaitable[None]]


class Preprocessor:
    """One raw record in, its normalized events out; nothing in it can stop the partition.

    ``send`` writes a normalized event (``ctx.topics.send``), ``send_invalid`` an InvalidEvent
    (key, record). Kept out of the agent so that every failure path is testable on its own.
    """

    def __init__(self, send: Send, send_invalid: SendInvalid, raw_topic: str) -> None:
        self.send = send
        self.send_invalid = send_invalid
        self.raw_topic = raw_topic
        self.codec = get_codec()

    async def handle(self, value: bytes) -> str:
        """Process one raw record; returns the outcome counted in ``stage_events``."""
        try:
            raw = self.codec.decode(value)
        except CodecError as exc:
            await self.send_invalid(
                b"", invalid_record("preprocess", str(exc), value, self.raw_topic)
            )
            return "invalid"
        try:
            result = normalize_delivery(
                raw["body"],
                delivery_id=raw["delivery_id"],
                received_at_ms=_ms(raw["received_at"]),
                tenant_for=tenant_map(raw),
            )
        except Exception as exc:  # a poison pill nobody foresaw must not stop the partition
            log.exception("preprocess: cannot normalize delivery %s", raw["delivery_id"])
            reason = f"cannot normalize: {exc!r}"[:500]
            record = invalid_record("preprocess", reason, value, self.raw_topic)
            await self.send_invalid(raw["delivery_id"].encode(), record)
            return "invalid"
        for message in result.messages:
            key = chat_key(message["tenant_id"], message["chat_id"]).encode()
            await self._send_or_park(t.INBOUND, key, message)
        for status in result.statuses:
            key = number_key(status["tenant_id"], status["phone_number_id"]).encode()
            await self._send_or_park(t.STATUSES, key, status)
        for bad in result.invalid:
            bad.setdefault("source_topic", self.raw_topic)
            await self.send_invalid(raw["delivery_id"].encode(), bad)
        return "ok"

    async def _send_or_park(self, spec: t.TopicSpec, key: bytes, record: dict[str, Any]) -> None:
        """Send one normalized event; one Avro cannot carry goes to invalid, not a crash."""
        try:
            await self.send(spec, key, record)
        except CodecError as exc:
            fragment = json.dumps(record, default=str, ensure_ascii=True).encode()
            await self.send_invalid(
                key, invalid_record("preprocess", str(exc), fragment, self.raw_topic)
            )


def register(app: faust.App, ctx: StageContext) -> None:
    ctx.topics.of(t.RAW)  # declare it (typed) for tools that list the app's topics
    ctx.topics.of(t.INBOUND)  # declared for tools; sent through ctx.topics.send
    ctx.topics.of(t.STATUSES)
    invalid = ctx.topics.of(t.INVALID)
    raw_name = ctx.topics.name(t.RAW)
    stage_latency = STAGE_LATENCY.labels("preprocess")
    outcomes = {
        outcome: STAGE_EVENTS.labels("preprocess", outcome) for outcome in ("ok", "invalid")
    }
    # read raw bytes and decode ourselves: a corrupt record must become an InvalidEvent,
    # not a crashed agent
    source = app.topic(raw_name, key_serializer="raw", value_serializer="raw")

    async def send_invalid(key: bytes, record: dict[str, Any]) -> None:
        await invalid.send(key=key, value=record)

    @app.agent(source, name="preprocess")
    async def preprocess(stream: faust.StreamT) -> None:
        preprocessor = Preprocessor(ctx.topics.send, send_invalid, raw_name)
        async for event in stream.events():
            started = time.perf_counter()
            outcomes[await preprocessor.handle(event.value)].inc()
            stage_latency.observe(time.perf_counter() - started)
