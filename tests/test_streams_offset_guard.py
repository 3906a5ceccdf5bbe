"""The offset guard: Faust's consumer must neither skip records nor commit past unprocessed ones.

First the guard's decisions, on a real :class:`GuardedConsumer` built by a Faust app (no broker
needed for bookkeeping). Then the real thing on the session broker: a Faust app consuming a
topic has its fetch position jumped forward under it, which is what the rebalance race does
(a stale fetch returns records from beyond the offset the recovery sought back to). With the
guard every record is processed and the commit ends at the end; the same run with Faust's own
consumer loses the jumped-over records and commits past them, which shows the test can fail.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.types import TP

from onyx_wa.kafka import committed_offsets, start_producer
from onyx_wa.metrics import CONSUMER_LOST_RECORDS, SKIPPED_RECORDS
from streams import offset_guard
from streams.offset_guard import PIN_TIMEOUT_S, GuardedConsumer

pytestmark = pytest.mark.timeout(120)

P0 = TP("x.wa.inbound", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def guarded(monkeypatch) -> tuple[GuardedConsumer, list[tuple[TP, int]], Clock]:
    """A guarded consumer whose seeks are recorded instead of sent to a broker."""
    app = faust.App(f"guard-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1")
    offset_guard.install(app)
    consumer = app.consumer
    assert isinstance(consumer, GuardedConsumer)
    seeks: list[tuple[TP, int]] = []

    async def record_seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    monkeypatch.setattr(consumer, "_seek", record_seek)
    clock = Clock()
    consumer._read_offset._clock = clock
    return consumer, seeks, clock


async def deliver(consumer: GuardedConsumer, tp: TP, *offsets: int) -> None:
    """What the drain loop does per record: filter on the read offset, then record it."""
    for offset in offsets:
        read = consumer._read_offset[tp]
        if read is None or offset >= read:
            consumer._read_offset[tp] = offset
    await asyncio.sleep(0)  # let a scheduled seek run


async def test_a_jump_pins_the_read_offset_and_seeks_back(guarded):
    consumer, seeks, _ = guarded
    before = SKIPPED_RECORDS.labels(P0.topic)._value.get()
    consumer._read_offset.update({P0: 50})  # perform_seek after an assignment: committed 50
    await deliver(consumer, P0, 50, 51, 52, 57, 58)  # 53-56 skipped, 58 fetched ahead
    assert seeks == [(P0, 53)]
    assert SKIPPED_RECORDS.labels(P0.topic)._value.get() - before == 4
    assert consumer._read_offset[P0] == 53  # the re-fetched records pass the drain loop
    assert consumer._read_offset.pinned(P0) == 53
    await deliver(consumer, P0, 53, 54, 55, 56, 57, 58, 59)  # the refill, then onwards
    assert consumer._read_offset.pinned(P0) is None
    assert consumer._read_offset[P0] == 59 and consumer._read_offset.expected(P0) == 60
    assert seeks == [(P0, 53)]  # once


async def test_redeliveries_and_the_first_record_of_an_assignment_are_not_skips(guarded):
    consumer, seeks, _ = guarded
    await deliver(consumer, P0, 700)  # nothing known yet (no committed offset)
    await deliver(consumer, P0, 701, 701, 702)
    consumer._read_offset.update({P0: 690})  # a rebalance sought back: 690 comes next
    await deliver(consumer, P0, 690, 691)
    assert seeks == []


async def test_a_failed_seek_back_is_retried_while_the_partition_waits(guarded, monkeypatch):
    consumer, seeks, _ = guarded
    monkeypatch.setattr(offset_guard, "SEEK_RETRY_S", 0.0)
    failures = [RuntimeError("broker busy"), RuntimeError("broker busy")]

    async def flaky_seek(tp: TP, offset: int) -> None:
        if failures:
            raise failures.pop()
        seeks.append((tp, offset))

    monkeypatch.setattr(consumer, "_seek", flaky_seek)
    consumer._read_offset.update({P0: 10})
    await deliver(consumer, P0, 10, 15)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seeks == [(P0, 11)]


async def test_a_seek_or_a_revocation_clears_the_pin(guarded):
    consumer, seeks, _ = guarded
    consumer._read_offset.update({P0: 10})
    await deliver(consumer, P0, 10, 15)
    assert consumer._read_offset.pinned(P0) == 11
    consumer._read_offset.pop(P0, None)  # revoked: the next owner starts at the commit
    assert consumer._read_offset.pinned(P0) is None and consumer._read_offset.expected(P0) is None
    await deliver(consumer, P0, 40)
    await consumer.seek(P0, 20)
    assert consumer._read_offset.expected(P0) == 20 and consumer._read_offset[P0] == 20


async def test_changelog_partitions_are_not_guarded(guarded):
    consumer, seeks, _ = guarded
    table = consumer.app.Table("state", default=int)
    changelog = TP(table.changelog_topic.get_topic_name(), 0)
    await deliver(consumer, changelog, 3, 9)  # compaction leaves gaps in changelogs
    assert seeks == [] and consumer._read_offset[changelog] == 9


async def test_records_that_never_come_back_are_committed_over_after_the_timeout(guarded):
    consumer, seeks, clock = guarded
    before = CONSUMER_LOST_RECORDS.labels(P0.topic)._value.get()
    consumer._read_offset.update({P0: 100})
    await deliver(consumer, P0, 100, 130)  # 101-129 missing (deleted by retention, say)
    clock.now += PIN_TIMEOUT_S - 1
    await deliver(consumer, P0, 131)
    assert consumer._read_offset.pinned(P0) == 101  # still waiting
    clock.now += 2
    await deliver(consumer, P0, 132)
    assert consumer._read_offset.pinned(P0) is None
    assert CONSUMER_LOST_RECORDS.labels(P0.topic)._value.get() - before == 31
    assert consumer._gap[P0].begin() == 101 and consumer._gap[P0].end() == 132


def test_a_commit_waits_for_the_committed_record_itself(guarded):
    """Faust accepts a first acked offset one above the committed one: with concurrent actors
    a record still being processed (58) did not stop a commit of 59-60."""
    consumer, _, _ = guarded
    consumer._committed_offset[P0] = 58
    consumer._acked[P0].extend([59, 60])
    assert consumer._new_offset(P0) is None
    consumer._acked[P0].append(58)
    assert consumer._new_offset(P0) == 61


async def test_a_new_group_commits_from_the_first_record_it_read(guarded):
    """Nothing committed yet (a new group reading from the earliest offset): record 0, still in
    flight in one actor, must hold back a commit of 1-2 finished by others."""
    consumer, _, _ = guarded
    consumer._read_offset.update({P0: None})
    await deliver(consumer, P0, 0, 1, 2)
    consumer._acked[P0].extend([1, 2])
    assert consumer._new_offset(P0) is None
    consumer._acked[P0].append(0)
    assert consumer._new_offset(P0) == 3


async def test_drain_loop_gaps_are_never_committable_on_pipeline_topics(guarded):
    consumer, _, _ = guarded
    consumer._committed_offset[P0] = 10
    await consumer._add_gap(P0, 11, 20)  # what the drain loop does on a jump
    consumer._acked[P0].append(20)
    assert consumer._new_offset(P0) is None


# --- the real broker ----------------------------------------------------------------------------


async def run_forced_skip(kafka: Any, guard: bool) -> tuple[set[int], int | None]:
    """Consume 60 records with a Faust agent, jumping the fetch position from 20 to 30.

    Returns the offsets the agent processed and the group's committed offset at the end.
    """
    settings = kafka.settings()
    topic_name = f"{settings.topic_prefix}.skip-{'guarded' if guard else 'plain'}"
    await kafka.create_topics({topic_name: 1})
    app = kafka.faust_app(f"{settings.topic_prefix}-skip-{'guarded' if guard else 'plain'}")
    if guard:
        offset_guard.install(app)
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw", partitions=1)
    seen: list[int] = []
    first_twenty = asyncio.Event()

    @app.agent(topic)
    async def consume(stream: Any) -> None:
        async for event in stream.events():
            seen.append(event.message.offset)
            if len(set(seen)) >= 20:
                first_twenty.set()

    producer = await start_producer(settings)
    try:
        for i in range(20):
            await producer.send_and_wait(topic_name, b"k", f"{i}".encode())
        await app.start()
        await asyncio.wait_for(first_twenty.wait(), 60)
        await asyncio.sleep(0.3)
        tp = TP(topic_name, 0)
        app.consumer._thread.seek(tp, 30)  # the stale-fetch race: the position jumps ahead
        for i in range(20, 60):
            await producer.send_and_wait(topic_name, b"k", f"{i}".encode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while max(seen, default=-1) < 59 and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the guarded consumer re-reads the hole
        await app.consumer.commit()
        committed = await committed_offsets(
            kafka.bootstrap_servers, app.conf.id, [TopicPartition(topic_name, 0)]
        )
    finally:
        await producer.stop()
        await app.stop()
    return set(seen), committed[TopicPartition(topic_name, 0)]


async def test_a_forced_skip_loses_nothing_with_the_guard_and_records_without_it(kafka):
    processed, committed = await run_forced_skip(kafka, guard=True)
    assert processed == set(range(60)) and committed == 60
    # the control: Faust's own consumer skips 20-29 and commits past them
    processed, committed = await run_forced_skip(kafka, guard=False)
    assert set(range(20, 30)) - processed and committed == 60


def test_every_pipeline_worker_consumes_through_the_guard(tmp_path):
    from onyx_wa.settings import load_settings
    from streams.app import build_app

    app, _ = build_app(load_settings(data_dir=tmp_path))
    assert isinstance(app.consumer, GuardedConsumer)


def test_no_pipeline_topic_is_compacted():
    """The guard takes any jump in offsets on a pipeline topic for a skip. Compaction would
    make legitimate jumps: a compacted pipeline topic needs the guard taught about it first."""
    from onyx_wa import topics as t

    assert [spec.name for spec in t.ALL if spec.compacted] == []
