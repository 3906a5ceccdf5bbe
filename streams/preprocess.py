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
from datetime import datetime
from typing import Any

import faust

from onyx_wa import topics as t
from onyx_wa.metrics import STAGE_EVENTS, STAGE_LATENCY
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


def register(app: faust.App, ctx: StageContext) -> None:
    ctx.topics.of(t.RAW)  # declare it (typed) for tools that list the app's topics
    ctx.topics.of(t.INBOUND)  # declared for tools; sent through ctx.topics.send
    ctx.topics.of(t.STATUSES)
    invalid = ctx.topics.of(t.INVALID)
    raw_name = ctx.topics.name(t.RAW)
    send = ctx.topics.send
    stage_ok = STAGE_EVENTS.labels("preprocess", "ok")
    stage_latency = STAGE_LATENCY.labels("preprocess")
    # read raw bytes and decode ourselves: a corrupt record must become an InvalidEvent,
    # not a crashed agent
    source = app.topic(raw_name, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="preprocess")
    async def preprocess(stream: faust.StreamT) -> None:
        from schemas.codec import CodecError, get_codec

        codec = get_codec()

        async def _send_or_park(kind: str, key: bytes, record: dict[str, Any]) -> None:
            """Send one normalized event; one Avro cannot carry goes to invalid, not a crash."""
            try:
                await send(kind, key, record)
            except CodecError as exc:
                fragment = json.dumps(record, default=str, ensure_ascii=True).encode()
                await invalid.send(
                    key=key, value=invalid_record("preprocess", str(exc), fragment, raw_name)
                )

        async for event in stream.events():
            value = event.value
            started = time.perf_counter()
            try:
                raw = codec.decode(value)
            except CodecError as exc:
                await invalid.send(
                    key=b"", value=invalid_record("preprocess", str(exc), value, raw_name)
                )
                STAGE_EVENTS.labels("preprocess", "invalid").inc()
                continue
            try:
                result = normalize_delivery(
                    raw["body"],
                    delivery_id=raw["delivery_id"],
                    received_at_ms=_ms(raw["received_at"]),
                    tenant_for=tenant_map(raw),
                )
            except Exception as exc:  # a poison pill must not stop the partition
                log.exception("preprocess: cannot normalize delivery %s", raw["delivery_id"])
                await invalid.send(
                    key=raw["delivery_id"].encode(),
                    value=invalid_record(
                        "preprocess", f"cannot normalize: {exc!r}"[:500], value, raw_name
                    ),
                )
                STAGE_EVENTS.labels("preprocess", "invalid").inc()
                continue
            for message in result.messages:
                key = chat_key(message["tenant_id"], message["chat_id"]).encode()
                await _send_or_park(t.INBOUND, key, message)
            for status in result.statuses:
                key = number_key(status["tenant_id"], status["phone_number_id"]).encode()
                await _send_or_park(t.STATUSES, key, status)
            for bad in result.invalid:
                bad.setdefault("source_topic", raw_name)
                await invalid.send(key=raw["delivery_id"].encode(), value=bad)
            stage_ok.inc()
            stage_latency.observe(time.perf_counter() - started)
