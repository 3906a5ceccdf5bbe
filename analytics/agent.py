"""The ``analytics`` agent: answer requests, answer results and feedback → fact tables.

One agent over the three topics (merged, read raw and decoded here so a corrupt record is
skipped instead of crashing the worker). Records are taken in batches (up to ``BATCH_MAX`` or
``BATCH_WITHIN_S`` seconds, whichever comes first), folded per key and written in one
transaction, so the database sees one round trip per batch instead of one per event.

At-least-once: Faust's ``take_events`` acks a batch's events only when the agent asks for the
next batch, i.e. after :func:`analytics.store.write_batch` committed; offsets are committed from
acks. A crash before that redelivers the batch, and the upserts make re-applying it harmless.
A database that is down stalls this agent (its lag grows; nothing is lost): the write is retried
with backoff until it succeeds. If the worker is stopped while a batch is unwritten, the batch's
events are withheld from the ack bookkeeping so their offsets are not committed on the way out.
Facts of a forgotten user's events up to the forget are not written (``analytics.store``)
and are counted as ``forgotten``. A record that cannot be decoded or mapped is logged, counted
and skipped (it would never succeed); a batch the database rejects for its content (not for
being unreachable) is retried fact by fact, and the facts it still rejects are skipped the same
way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import faust

from analytics.facts import (
    UserHasher,
    feedback_fact,
    request_fact,
    result_fact,
)
from analytics.store import FactBatch, write_batch
from onyx_wa import topics as t
from onyx_wa.metrics import STAGE_EVENTS, STAGE_LATENCY
from schemas.codec import get_codec
from streams.app import StageContext

log = logging.getLogger(__name__)

BATCH_MAX = 500
BATCH_WITHIN_S = 1.0
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
TOPICS = (t.ANSWER_REQUESTS, t.ANSWER_RESULTS, t.FEEDBACK)
MAPPERS = {"request": request_fact, "result": result_fact, "feedback": feedback_fact}


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying as they are: the database unreachable, locked or timing out."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return False


class AnalyticsWriter:
    """Maps one batch of raw events to facts and writes them, retrying until it is stored."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        pairs = zip(TOPICS, MAPPERS, strict=True)
        self.kinds = {ctx.topics.name(spec): kind for spec, kind in pairs}
        self._hasher: UserHasher | None = None
        self._decode = get_codec().decode
        self.counted = {
            outcome: STAGE_EVENTS.labels("analytics", outcome)
            for outcome in ("request", "result", "feedback", "invalid", "skipped", "forgotten")
        }
        self.latency = STAGE_LATENCY.labels("analytics")

    @property
    def hasher(self) -> UserHasher:
        if self._hasher is None:
            self._hasher = self.ctx.resources.get("user_hasher") or UserHasher.from_settings(
                self.ctx.settings
            )
        return self._hasher

    @property
    def sessions(self) -> Any:
        sessions = self.ctx.resources.get("analytics_sessions")
        if sessions is None:
            sessions = getattr(self.ctx.resources.get("config"), "sessions", None)
        if sessions is None:
            raise RuntimeError("the analytics agent needs the database (the worker's config)")
        return sessions

    def fold(self, items: Sequence[tuple[str | None, Any]]) -> FactBatch:
        """``(topic, raw value)`` pairs → a folded batch; bad records are counted and skipped."""
        batch = FactBatch()
        for topic, raw in items:
            kind = self.kinds.get(topic or "")
            try:
                if kind is None:
                    raise ValueError(f"record from an unexpected topic {topic!r}")
                batch.add(MAPPERS[kind](self._decode(raw), self.hasher))
            except Exception as exc:  # noqa: BLE001 - one bad record must not stall the rest
                log.warning("analytics: skipped a %s record: %s: %s", kind, type(exc).__name__, exc)
                self.counted["invalid"].inc()
                continue
            self.counted[kind].inc()
        return batch

    async def store(self, batch: FactBatch) -> None:
        """Write ``batch``; retry transient failures forever, split batches the DB rejects."""
        delay = RETRY_FIRST_S
        while True:
            try:
                self._written(batch, await write_batch(self.sessions, batch))
                return
            except Exception as exc:  # noqa: BLE001
                if not is_transient(exc):
                    await self._store_one_by_one(batch, exc)
                    return
                log.warning(
                    "analytics: database write failed (%s: %s); retrying in %.1f s",
                    type(exc).__name__, exc, delay,
                )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _written(self, batch: FactBatch, written: int) -> None:
        """Count the facts a forget covered (write_batch leaves them out)."""
        if written < len(batch):
            self.counted["forgotten"].inc(len(batch) - written)

    async def _store_one_by_one(self, batch: FactBatch, first: BaseException) -> None:
        log.warning("analytics: batch rejected (%s); writing it fact by fact", first)
        for fact in (*batch.requests.values(), *batch.results.values(), *batch.feedback.values()):
            single = FactBatch()
            single.add(fact)
            delay = RETRY_FIRST_S
            while True:
                try:
                    self._written(single, await write_batch(self.sessions, single))
                    break
                except Exception as exc:  # noqa: BLE001
                    if not is_transient(exc):
                        log.error("analytics: skipped a fact the database rejects: %s", exc)
                        self.counted["skipped"].inc()
                        break
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def handle(self, items: Sequence[tuple[str | None, Any]]) -> None:
        started = time.perf_counter()
        await self.store(self.fold(items))
        self.latency.observe((time.perf_counter() - started) / max(1, len(items)))


def _withhold(events: Sequence[Any]) -> None:
    """Keep these events' offsets from being committed (the worker stops mid-write).

    Faust commits the highest contiguous acked offset; an event whose message is marked as
    already acked is never added to the consumer's acked offsets, so the commit stops before it
    and the next owner of the partition reads it again.
    """
    for event in events:
        try:
            event.message.acked = True
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def register(app: faust.App, ctx: StageContext) -> None:
    writer = AnalyticsWriter(ctx)
    ctx.resources["analytics_writer"] = writer
    source = ctx.topics.merged(*TOPICS)

    @app.agent(source, name="analytics")
    async def analytics(stream: faust.StreamT) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            try:
                await writer.handle([(e.message.topic, e.value) for e in events])
            except BaseException:
                _withhold(events)  # leaving the loop acks the batch: make sure it does not
                raise
