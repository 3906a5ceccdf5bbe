"""The raw-topic publisher: one long-lived producer, ack before 200, timeout → 503.

Why ``acks=all`` and waiting: the ingress may only tell Meta "got it" once the delivery is
stored; otherwise a crash loses it and Meta never retries. If the broker is slow or down, the
ingress answers 503 and Meta redelivers later.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from onyx_wa import topics as t
from onyx_wa.kafka import producer_kwargs
from onyx_wa.settings import Settings
from schemas.codec import get_codec


class PublishFailed(Exception):
    """The broker did not acknowledge in time (→ 503)."""


class RawPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.raw_topic = t.full_name(t.RAW, settings.topic_prefix)
        self.unrouted_topic = t.full_name(t.UNROUTED, settings.topic_prefix)
        self._producer: AIOKafkaProducer | None = None
        self._codec = get_codec()
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the producer; a broker that is down now is retried on the next publish."""
        async with self._start_lock:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(**producer_kwargs(self.settings))
            try:
                await asyncio.wait_for(producer.start(), timeout=self.settings.publish_timeout_s)
            except Exception:
                await _quiet_stop(producer)
                raise PublishFailed("broker unreachable") from None
            self._producer = producer

    async def publish(self, record: dict[str, Any], *, routed: bool) -> float:
        """Publish and wait for the ack; returns the seconds it took."""
        started = time.perf_counter()
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        value = self._codec.encode("RawWebhook", record, validate=False)
        topic = self.raw_topic if routed else self.unrouted_topic
        try:
            future = await asyncio.wait_for(
                self._producer.send(topic, value, key=record["delivery_id"].encode()),
                timeout=self.settings.publish_timeout_s,
            )
            remaining = self.settings.publish_timeout_s - (time.perf_counter() - started)
            await asyncio.wait_for(future, timeout=max(remaining, 0.01))
        except (TimeoutError, Exception) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise PublishFailed(type(exc).__name__) from None
        return time.perf_counter() - started

    async def healthy(self) -> bool:
        from onyx_wa.kafka import wait_for_broker

        try:
            await wait_for_broker(self.settings.bootstrap_servers, timeout_s=2)
        except Exception:
            return False
        return True

    async def stop(self) -> None:
        if self._producer is not None:
            await _quiet_stop(self._producer)
            self._producer = None


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=5)
    except Exception:  # noqa: S110 - best effort on shutdown
        pass
