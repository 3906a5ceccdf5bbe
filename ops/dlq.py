"""Replay the outbound dead-letter queue: re-send what failed permanently, once fixed.

Why a new outbound id (``<original>:replay``): the sender's sent-ids table remembers the original
id as failed, so re-using it would be skipped; a *deterministic* new id means replaying the DLQ
twice still sends each message at most once more. The DLQ is read with a fresh, group-less
consumer, so no live group's offsets move.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from onyx_wa import topics as t
from onyx_wa.kafka import end_offsets, producer_kwargs
from onyx_wa.settings import Settings
from schemas.codec import CodecError, get_codec


@dataclass
class DlqReplay:
    read: int = 0
    replayed: int = 0
    skipped: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


async def replay_dlq(
    settings: Settings,
    *,
    tenant: str | None = None,
    codes: set[int] | None = None,
    dry_run: bool = False,
) -> DlqReplay:
    codec = get_codec()
    dlq = t.full_name(t.OUTBOUND_DLQ, settings.topic_prefix)
    outbound = t.full_name(t.OUTBOUND, settings.topic_prefix)
    parts = [TopicPartition(dlq, p) for p in range(settings.partitions)]
    ends = await end_offsets(settings.bootstrap_servers, parts, embedded=settings.tansu)
    summary = DlqReplay()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)
    producer = None if dry_run else AIOKafkaProducer(**producer_kwargs(settings))
    await consumer.start()
    if producer is not None:
        await producer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        remaining = {tp for tp in parts if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            if not batch:
                break
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp] - 1:
                        remaining.discard(tp)
                    if record.offset >= ends[tp]:
                        continue
                    summary.read += 1
                    await _replay_one(
                        record.value, codec, tenant, codes, summary, producer, outbound
                    )
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    return summary


async def _replay_one(
    value: bytes,
    codec: Any,
    tenant: str | None,
    codes: set[int] | None,
    summary: DlqReplay,
    producer: AIOKafkaProducer | None,
    outbound: str,
) -> None:
    try:
        failed = codec.decode(value)
    except CodecError:
        summary.skipped += 1
        return
    original = failed.get("original")
    if not original or (tenant and failed["tenant_id"] != tenant):
        summary.skipped += 1
        return
    if codes and failed.get("error_code") not in codes:
        summary.skipped += 1
        return
    code = str(failed.get("error_code"))
    summary.by_code[code] = summary.by_code.get(code, 0) + 1
    summary.replayed += 1
    if producer is None:
        return
    again = dict(original)
    base = again["outbound_id"].removesuffix(":replay")
    again["outbound_id"] = f"{base}:replay"
    again["created_at"] = int(time.time() * 1000)
    key = f"{again['tenant_id']}:{again['phone_number_id']}".encode()
    await producer.send_and_wait(outbound, codec.encode("OutboundMessage", again), key=key)
