"""The sender loop's commit points (egress/sender_loop.py ``OffsetTracker``)."""

from __future__ import annotations

from egress.sender_loop import OffsetTracker, sender_group


def test_the_commit_point_is_the_first_offset_not_finished() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.started(0, offset)
    assert tracker.commit_points() == {0: 10}
    tracker.finished(0, 12)  # out of order: 10 and 11 still run
    assert tracker.commit_points() == {0: 10}
    tracker.finished(0, 10)
    assert tracker.commit_points() == {0: 11}
    tracker.finished(0, 11)
    assert tracker.commit_points() == {0: 13}
    tracker.finished(0, 13)
    assert tracker.commit_points() == {0: 14}  # nothing in flight: after the last started
    assert tracker.in_flight() == 0


def test_a_record_left_for_redelivery_holds_its_partition_only() -> None:
    tracker = OffsetTracker()
    tracker.started(0, 5)
    tracker.started(1, 7)
    tracker.started(0, 6)
    tracker.finished(0, 6)
    tracker.finished(1, 7)
    # 5 is never finished (left for redelivery): the next owner must read it again
    assert tracker.commit_points() == {0: 5, 1: 8}
    assert tracker.in_flight() == 1


def test_forget_drops_everything_and_late_finishes_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.started(2, 1)
    tracker.forget()
    tracker.finished(2, 1)  # a send that finished after its partition was revoked
    assert tracker.commit_points() == {}
    assert tracker.in_flight() == 0


def test_the_sender_group_is_named_after_the_app() -> None:
    assert sender_group("onyx-wa-egress") == "onyx-wa-egress.sender"


def test_records_fetched_but_not_started_are_read_again_from_the_first() -> None:
    from types import SimpleNamespace

    from egress.sender_loop import not_started

    def records(*offsets: int) -> list:
        return [SimpleNamespace(offset=o) for o in offsets]

    batches = {"p0": records(1, 2), "p1": records(7, 8, 9), "p2": records(3), "p3": []}
    # stopped at p1's second record: p0 was started whole, p1 from 8 on, p2 not at all
    assert not_started(batches, "p1", 1) == {"p1": 8, "p2": 3}
    assert not_started(batches, "p0", 0) == {"p0": 1, "p1": 7, "p2": 3}
    assert not_started(batches, "p2", 1) == {}  # past its last record: nothing left


async def test_a_new_sender_group_starts_where_the_old_agent_group_stopped(kafka) -> None:
    """The upgrade from the sender agent: its offsets are in the Faust app's group."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from egress.sender_loop import seed_offsets

    topic = f"{kafka.prefix}.outbound-seed"
    await kafka.create_topics({topic: 2})
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        for i in range(6):
            await producer.send_and_wait(topic, b"%d" % i, partition=0)
            await producer.send_and_wait(topic, b"%d" % i, partition=1)
    finally:
        await producer.stop()
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    old_group, new_group = kafka.group("app"), kafka.group("app.sender")

    def consumer(group: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers, group_id=group,
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip

    old = consumer(old_group)
    await old.start()
    try:
        old.assign([tp0])
        await old.commit({tp0: 4})  # the agent had finished 0-3 of partition 0, nothing of 1
    finally:
        await old.stop()
    new = consumer(new_group)
    await new.start()
    try:
        new.assign([tp0, tp1])
        seeded = await seed_offsets(new, [tp0, tp1], kafka.bootstrap_servers, old_group)
        assert seeded == {tp0: 4}
        got: dict[int, list[int]] = {0: [], 1: []}
        for _ in range(20):
            for tp, records in (await new.getmany(timeout_ms=500)).items():
                got[tp.partition] += [r.offset for r in records]
            if len(got[0]) >= 2 and len(got[1]) >= 6:
                break
        assert got == {0: [4, 5], 1: [0, 1, 2, 3, 4, 5]}
        await new.commit({tp0: 6, tp1: 6})
        # once the new group has its own offsets, the old group's are not read again
        new.assign([tp0, tp1])
        assert await seed_offsets(new, [tp0, tp1], kafka.bootstrap_servers, old_group) == {}
    finally:
        await new.stop()


async def test_a_crash_of_the_loop_crashes_the_worker() -> None:
    """A bug in the loop must not leave a worker that is up but never sends again."""
    import asyncio

    from egress.sender_loop import SenderLoop

    crashes: list[BaseException] = []

    class App:  # the one thing the loop asks of the Faust app here
        async def crash(self, exc: BaseException) -> None:
            crashes.append(exc)

    async def broken_consume() -> None:
        raise RuntimeError("a bug in the loop")

    loop = SenderLoop.__new__(SenderLoop)
    loop.app = App()
    loop._consume = broken_consume  # type: ignore[method-assign]
    await asyncio.wait_for(loop._run(), 5)
    assert [str(c) for c in crashes] == ["a bug in the loop"]


def test_plain_consumers_do_not_sit_on_a_fetch_on_the_embedded_broker() -> None:
    """Tansu holds a fetch for the whole ``fetch_max_wait_ms``: aiokafka's default (500 ms)
    added ~0.25 s to every reply at low rates once the sender read outside Faust."""
    from onyx_wa.kafka import TANSU_FETCH_MAX_WAIT_MS, consumer_kwargs
    from onyx_wa.settings import load_settings

    tansu = consumer_kwargs(load_settings(broker_flavor="tansu"), "g")
    kafka = consumer_kwargs(load_settings(broker_flavor="kafka"), "g")
    assert tansu["fetch_max_wait_ms"] == TANSU_FETCH_MAX_WAIT_MS == 50
    assert "fetch_max_wait_ms" not in kafka  # Kafka answers as soon as data is there


async def test_a_failed_commit_is_logged_and_retried_at_the_next_one(caplog) -> None:
    """A broker that refuses the commit: at least once, not a crash. The offsets it could not
    commit are not taken as committed, so the next commit sends them again."""
    from aiokafka.errors import KafkaConnectionError

    from egress.sender_loop import SenderLoop

    commits: list[dict] = []
    failing = [True]

    class Consumer:
        async def commit(self, offsets: dict) -> None:
            if failing[0]:
                raise KafkaConnectionError("broker down")
            commits.append({tp.partition: o for tp, o in offsets.items()})

    loop = SenderLoop.__new__(SenderLoop)
    loop.topic, loop._consumer, loop._committed = "t", Consumer(), {}
    loop.tracker = OffsetTracker()
    loop.tracker.started(0, 41)
    loop.tracker.finished(0, 41)
    await loop._commit(force=True)
    assert commits == [] and loop._committed == {}
    assert any("not committed" in r.getMessage() for r in caplog.records)
    failing[0] = False
    await loop._commit()
    assert commits == [{0: 42}] and loop._committed == {0: 42}
    await loop._commit()  # nothing new: no second request
    assert commits == [{0: 42}]
