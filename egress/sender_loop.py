"""Feeds the outbound topic to the :class:`~egress.stage.Sender` from a plain aiokafka consumer.

Why not a Faust agent: measured in ``bench egress`` (docs/egress.md), a Faust agent that does
nothing but consume, decode, post and acknowledge reaches ~0.6 of a bare aiohttp client, a
plain aiokafka loop doing the same ~1.0. Faust's per-record path (its consumer thread, the
conductor, the stream, the acks) cost about as much CPU as the HTTP call itself. The sender's
own work (the durable marks, the result) comes on top of that, so on a Faust stream the sender
could not come near its goal (0.7).

What stays Faust's: the ``sent`` table (its changelog, recovery, and the partitions this worker
holds), the statuses and compose agents. This loop follows that table: it consumes exactly the
outbound partitions whose ``sent`` partition this worker holds (outbound messages and the table
are keyed alike, tenant:number, and co-partitioned), and only once Faust has recovered the
table (``on_rebalance_complete``). On every rebalance (Faust revokes everything first) it stops
taking records, waits for the sends in flight (``send_drain_s``, then cancels them), and
commits, before Faust lets the partitions go: what the agent's stream did through Faust's
``wait_empty``.

Offsets: its own consumer group (``<app id>.sender``), manually assigned, never joined. Kafka
accepts commits to a group that has no members. The committed offset of a partition is the
first record not yet finished: a record left for redelivery holds it there, as an unacknowledged
event did in Faust, so the next owner reads it again (the ``sent`` table dedupes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.exceptions import NotReady

from egress.errors import LeftForRedelivery
from onyx_wa import topics as t
from onyx_wa.kafka import committed_offsets, consumer_kwargs
from schemas.codec import get_codec

log = logging.getLogger(__name__)


def sender_group(app_id: str) -> str:
    """The consumer group that holds the sender's offsets on the outbound topic."""
    return f"{app_id}.sender"


class OffsetTracker:
    """Per partition: the offsets started, in order, and which have finished.

    The commit point of a partition is its first offset not finished (every record before it is
    done); with nothing in flight, the offset after the last one started.
    """

    def __init__(self) -> None:
        self._order: dict[int, deque[int]] = {}
        self._done: dict[int, set[int]] = {}
        self._next: dict[int, int] = {}

    def started(self, partition: int, offset: int) -> None:
        self._order.setdefault(partition, deque()).append(offset)
        self._next[partition] = offset + 1

    def finished(self, partition: int, offset: int) -> None:
        order = self._order.get(partition)
        if not order:
            return  # forgotten (its partition was revoked meanwhile)
        done = self._done.setdefault(partition, set())
        done.add(offset)
        while order and order[0] in done:
            done.discard(order.popleft())

    def commit_points(self) -> dict[int, int]:
        return {
            partition: (order[0] if order else self._next[partition])
            for partition, order in self._order.items()
        }

    def in_flight(self) -> int:
        return sum(len(order) - len(self._done.get(p, ())) for p, order in self._order.items())

    def forget(self) -> None:
        self._order.clear()
        self._done.clear()
        self._next.clear()


def not_started(batches: dict[Any, list[Any]], at: Any, index: int) -> dict[Any, int]:
    """The first offset not started per partition of a ``getmany`` result whose dispatch
    stopped at record ``index`` of partition ``at`` (the partitions before it were started
    whole, those after it not at all)."""
    out: dict[Any, int] = {}
    reached = False
    for tp, records in batches.items():
        if tp == at:
            reached, first = True, index
        elif reached:
            first = 0
        else:
            continue
        if first < len(records):
            out[tp] = records[first].offset
    return out


async def seed_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], bootstrap: str, old_group: str
) -> dict[TopicPartition, int]:
    """Where this consumer's group has no offset yet, start where ``old_group`` stopped.

    Why: before this loop, the sender was an agent of the Faust app, and its offsets on the
    outbound topic are in the app's group. Without this, the first start after the upgrade
    would read the whole retained topic again (nothing would be sent twice, the ``sent`` table
    skips every id it holds, but a large topic takes a while). Returns the offsets seeded.
    """
    missing = [tp for tp in tps if await consumer.committed(tp) is None]
    if not missing:
        return {}
    seeded = {
        tp: offset
        for tp, offset in (await committed_offsets(bootstrap, old_group, missing)).items()
        if offset is not None
    }
    for tp, offset in seeded.items():
        consumer.seek(tp, offset)
    if seeded:
        log.info("sender offsets seeded from group %s: %s", old_group, seeded)
    return seeded


class SenderLoop:
    """A plain consumer of the outbound topic that hands each record to the sender.

    One task per record, at most ``window`` unfinished (the sender's HTTP slots bound the calls
    themselves; see ``egress.stage.SEND_WINDOW_FACTOR``).
    """

    def __init__(self, app: Any, ctx: Any, sender: Any, window: int) -> None:
        self.app = app
        self.ctx = ctx
        self.sender = sender
        self.window = window
        self.topic = ctx.topics.name(t.OUTBOUND)
        self.group = sender_group(app.conf.id)
        self.tracker = OffsetTracker()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._active = asyncio.Event()
        self._generation = 0  # bumped on every pause: records fetched before it are dropped
        self._committed: dict[int, int] = {}
        self._last_commit = 0.0
        self._stopped = False
        self._decode = get_codec().decode
        sender.owned_partitions = frozenset()  # nothing until the table is recovered
        app.on_partitions_revoked.connect(self._on_partitions_revoked)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        app.on_before_shutdown.connect(self._on_before_shutdown)

    @property
    def partitions(self) -> frozenset[int]:
        """The outbound partitions consumed now: the sender's ``owned_partitions``, so that its
        ownership check and this loop read one set."""
        return self.sender.owned_partitions or frozenset()

    # --- Faust's rebalance signals ---------------------------------------------------------

    async def _on_partitions_revoked(self, app: Any, revoked: Any = None, **_: Any) -> None:
        await self.pause()

    async def _on_rebalance_complete(self, app: Any, **_: Any) -> None:
        """The ``sent`` table is recovered: consume the partitions this worker now holds."""
        if self._stopped:
            return
        changelog = self.sender.sent.changelog_topic.get_topic_name()
        held = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog}
        await self.resume(held)

    async def _on_before_shutdown(self, app: Any, **_: Any) -> None:
        await self.stop()

    # --- life cycle ---------------------------------------------------------------------------

    async def resume(self, partitions: Iterable[int]) -> None:
        if self._stopped:
            return
        await self.pause()  # a stray resume without a revoke first: finish what runs
        consumer = await self._ensure_started()
        self._generation += 1
        self.sender.owned_partitions = frozenset(partitions)
        tps = [TopicPartition(self.topic, p) for p in sorted(self.partitions)]
        consumer.assign(tps)
        await seed_offsets(consumer, tps, self.ctx.settings.bootstrap_servers, self.app.conf.id)
        self._committed = {}
        if self.partitions:
            self._active.set()
        log.info("sender consuming %s partitions %s", self.topic, sorted(self.partitions))

    async def pause(self) -> None:
        """Take no more records, let the sends in flight finish, commit, release the partitions.

        The sends get ``send_drain_s`` (10 s); what still runs then is cancelled, as a crash
        would end it, and stays uncommitted: a send whose durable "sending" mark is written is
        reconciled by the partition's next owner, one without it never happened. Unbounded, a
        send in a retry back-off (up to minutes) or a Graph API that does not answer would hold
        the rebalance or the shutdown as long.
        """
        self._active.clear()
        self._generation += 1
        held, self.sender.owned_partitions = self.partitions, frozenset()
        if self._tasks:
            _, running = await asyncio.wait(
                list(self._tasks), timeout=self.ctx.settings.send_drain_s
            )
            if running:
                log.warning("%d sends still running after %.0f s: cancelled, left for the "
                            "partitions' next owner", len(running),
                            self.ctx.settings.send_drain_s)  # fmt: skip
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
        if held and self._consumer is not None:
            await self._commit(force=True)
            self._consumer.assign([])
        self.tracker.forget()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True  # from here a failed send is left for the next owner
        await self.pause()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _ensure_started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            settings = self.ctx.settings
            self._consumer = AIOKafkaConsumer(**consumer_kwargs(settings, self.group))
            await self._consumer.start()
            self._slots = asyncio.Semaphore(self.window)
            self._task = asyncio.ensure_future(self._run())
        return self._consumer

    # --- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._consume()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nothing else would ever send again: crash the worker
            log.exception("sender loop crashed")
            await self.app.crash(exc)

    async def _consume(self) -> None:
        consumer, slots = self._consumer, self._slots
        assert consumer is not None and slots is not None
        interval = float(self.app.conf.broker_commit_interval)
        create_task = asyncio.get_running_loop().create_task
        while True:
            await self._active.wait()
            generation = self._generation
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for index, record in enumerate(records):
                    await slots.acquire()
                    if generation != self._generation:  # paused (maybe resumed) meanwhile
                        slots.release()
                        self._read_again(batches, tp, index)
                        break
                    self.tracker.started(tp.partition, record.offset)
                    task = create_task(self._send(record, slots))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    continue
                break
            if time.monotonic() - self._last_commit >= interval:
                await self._commit()

    def _read_again(self, batches: dict[Any, list[Any]], at: Any, index: int) -> None:
        """Records fetched but not started: the consumer's position is past them, so where it
        still holds their partition it must read them again (where it does not, the revoke's
        commit point is before them anyway)."""
        consumer = self._consumer
        assert consumer is not None
        held = consumer.assignment()
        for tp, offset in not_started(batches, at, index).items():
            if tp in held:
                consumer.seek(tp, offset)

    async def _send(self, record: Any, slots: asyncio.Semaphore) -> None:
        finished = False
        message: dict[str, Any] = {}
        try:
            message = self._decode(record.value, reader="OutboundMessage")
            await self.sender.handle_durably(message, record.partition)
            finished = True
        except LeftForRedelivery as exc:
            log.warning("%s: left for redelivery", exc)
        except Exception as exc:
            # while the worker stops, the producer goes away under in-flight sends: leave those
            # for the partition's next owner (the "sending" mark keeps that from duplicating a
            # send). Any other failure finishes the record, so one bad message cannot stall
            # its partition.
            finished = not (isinstance(exc, NotReady) or self.app.should_stop or self._stopped)
            log.exception(
                "sender failed on %s%s",
                message.get("outbound_id", f"{record.topic}[{record.partition}]@{record.offset}"),
                "" if finished else " (left for redelivery: the worker is stopping)",
            )
        finally:
            slots.release()
            if finished:
                self.tracker.finished(record.partition, record.offset)

    async def _commit(self, *, force: bool = False) -> None:
        self._last_commit = time.monotonic()
        points = {
            p: offset
            for p, offset in self.tracker.commit_points().items()
            if self._committed.get(p) != offset
        }
        if not points or self._consumer is None:
            return
        try:
            await self._consumer.commit(
                {TopicPartition(self.topic, p): offset for p, offset in points.items()}
            )
        except KafkaError as exc:  # at least once: the next owner reads from the last commit
            log.warning("sender offsets not committed (%r)%s", exc, "" if force else ", retrying")
            return
        self._committed.update(points)
