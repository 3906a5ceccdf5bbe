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
crash, a rebalance or a replay. An id left in ``sending`` by a crash is uncertain: Meta has no
idempotency key, so resending blindly could duplicate. Every send carries its outbound id as
``biz_opaque_callback_data``, which Meta echoes in the message's status webhooks, so the new
owner *reconciles*: it waits (``send_reconcile_s``) for a status naming that id — the send
happened, it is recorded and not repeated — and resends only when none comes. With
``uncertain_sends=dlq`` it never resends and reports the id to the DLQ as ``uncertain`` instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import faust
import orjson
from aiokafka.errors import KafkaError, ProducerClosed
from faust.types import TP

from egress.errors import ErrorAction, LeftForRedelivery, backoff_s
from egress.graph import GraphApiError, GraphClient
from egress.outbound import answer_outbound
from egress.sender_loop import SenderLoop
from egress.throttle import RecipientPacer, TokenBucket
from onyx_wa import topics as t
from onyx_wa.metrics import (
    DLQ,
    DUPLICATES,
    PAUSED_BOTS,
    RECONCILED,
    SENDS,
    STAGE_EVENTS,
    THROTTLE_WAIT,
)
from schemas.codec import get_codec
from streams.app import StageContext, table_options

log = logging.getLogger(__name__)

# unfinished messages in flight per sender, as a multiple of the HTTP concurrency
# (``egress.sender_loop``: the wait for the durable mark overlaps other sends' HTTP calls)
SEND_WINDOW_FACTOR = 8
# tries of a message whose Kafka records failed, before it is left for redelivery
KAFKA_WRITE_ATTEMPTS = 4


# states of a ``sent`` entry that a crash can leave behind without the send's response
UNCERTAIN_STATES = frozenset({"sending", "reconciling"})
CALLBACK_FIELD = "biz_opaque_callback_data"


def _now_ms() -> int:
    return int(time.time() * 1000)


def with_callback_data(body: str, outbound_id: str) -> str:
    """The send body with the outbound id as ``biz_opaque_callback_data`` (echoed in statuses).

    A splice, not a parse and re-serialisation: ``body`` is the compact JSON object the compose
    step wrote, so its last character closes it.
    """
    if CALLBACK_FIELD in body:
        return body
    body = body.rstrip()
    if not body.endswith("}"):
        raise ValueError("an outbound payload must be a JSON object")
    return f"{body[:-1]},{json.dumps(CALLBACK_FIELD)}:{json.dumps(outbound_id)}}}"


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


_SENT = SENDS.labels("sent", "0")


class RecordBatches:
    """Kafka records gathered into batches per topic-partition: a group commit.

    Why: a send writes four records, and ``AIOKafkaProducer.send`` per record (a coroutine,
    metadata and partition checks, a future per record) was about a third of the sender's CPU.
    Here a record is one ``BatchBuilder.append`` into the partition's open batch. One writer
    task per partition submits batches with ``send_batch``, one at a time and in order
    ("sending" then "sent" of an id must stay in that order in the changelog); ``send_batch``
    returns once the previous batch of the partition has gone to the broker, so while one batch
    is on the wire the next one fills up. :meth:`append` returns the batch's future: it
    resolves once the broker has acknowledged the batch (``acks=all``).
    """

    def __init__(
        self, producer: Any, on_delivered: Callable[[str, int, int], None] | None = None
    ) -> None:
        self._producer = producer  # the aiokafka producer of the Faust app
        self._on_delivered = on_delivered  # (topic, partition, last offset) per batch
        self._open: dict[tuple[str, int], tuple[Any, asyncio.Future[Any]]] = {}
        self._full: dict[tuple[str, int], deque[tuple[Any, asyncio.Future[Any]]]] = {}
        self._wake: dict[tuple[str, int], asyncio.Event] = {}
        self._writers: dict[tuple[str, int], asyncio.Task[None]] = {}

    def append(self, topic: str, partition: int, key: bytes, value: bytes) -> asyncio.Future[Any]:
        tp = (topic, partition)
        slot = self._open.get(tp)
        if slot is None:
            slot = self._open[tp] = self._new_slot()
        if slot[0].append(timestamp=None, key=key, value=value) is None:
            # the batch is full: it goes next, and a new one opens
            self._full.setdefault(tp, deque()).append(self._open.pop(tp))
            slot = self._open[tp] = self._new_slot()
            if slot[0].append(timestamp=None, key=key, value=value) is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit in a batch")
        wake = self._wake.get(tp)
        if wake is None:
            wake = self._wake[tp] = asyncio.Event()
            self._writers[tp] = asyncio.ensure_future(self._write(tp, wake))
        wake.set()
        return slot[1]

    def _new_slot(self) -> tuple[Any, asyncio.Future[Any]]:
        return self._producer.create_batch(), asyncio.get_running_loop().create_future()

    def _next(self, tp: tuple[str, int]) -> tuple[Any, asyncio.Future[Any]] | None:
        full = self._full.get(tp)
        if full:
            return full.popleft()
        return self._open.pop(tp, None)

    async def _write(self, tp: tuple[str, int], wake: asyncio.Event) -> None:
        topic, partition = tp
        while True:
            await wake.wait()
            wake.clear()
            while (slot := self._next(tp)) is not None:
                builder, fut = slot
                # closed: aiokafka lingers an open batch (Faust's ``producer_linger_ms``, 10 ms)
                # before sending it. This batch is already a group commit, and a "sending" mark
                # in it holds its send back until the broker has it: it goes with the next
                # request. (Closed, the producer's own ``send`` cannot append to it either.)
                builder.close()
                count = builder.record_count()
                try:
                    delivered = await self._producer.send_batch(builder, topic, partition=partition)
                except Exception as exc:  # the producer failed or was closed: fail the waiters
                    if not fut.done():
                        fut.set_exception(exc)
                    continue
                delivered.add_done_callback(partial(self._delivered, fut, count))

    def _delivered(self, fut: asyncio.Future[Any], count: int, delivered: asyncio.Future) -> None:
        if fut.done():
            return
        if delivered.cancelled():  # aiokafka drops a batch it cannot deliver (it is stopping)
            fut.set_exception(KafkaError("record batch cancelled by the producer"))
        elif (exc := delivered.exception()) is not None:
            fut.set_exception(exc)
        else:
            meta = delivered.result()
            if self._on_delivered is not None:
                self._on_delivered(meta.topic, meta.partition, meta.offset + count - 1)
            fut.set_result(meta)

    async def aclose(self) -> None:
        for task in self._writers.values():
            task.cancel()
        await asyncio.gather(*self._writers.values(), return_exceptions=True)
        pending = [*self._open.values()] + [slot for q in self._full.values() for slot in q]
        for _, fut in pending:
            if not fut.done():
                # a KafkaError, not a cancellation: the waiter must know its record is unwritten
                fut.set_exception(ProducerClosed())
        self._writers.clear()
        self._wake.clear()
        self._open.clear()
        self._full.clear()


def set_local(table: Any, key: str, value: Any, partition: int) -> None:
    """Set ``table``'s local view for ``key`` in ``partition`` (its changelog record is
    written separately).

    The memory store is a dict. Faust's RocksDB store keeps a database per partition and picks
    it by the partition of the current Faust event; the sender runs outside Faust's streams
    (``egress.sender_loop``), with no current event, so it names the partition itself.
    """
    store = table.data
    db_for_partition = getattr(store, "_db_for_partition", None)
    if db_for_partition is None:
        store[key] = value
        return
    raw_key = store._encode_key(key)
    db_for_partition(partition).put(raw_key, store._encode_value(value))
    store._key_index[raw_key] = partition


def _json_bytes(obj: Any) -> bytes:
    """Compact JSON, as Faust's ``json`` codec writes it (orjson: ~5% of the sender's CPU was
    ``json.dumps`` of these marks). Anything orjson refuses (a non-string key, an integer over
    64 bits) goes through ``json``; both read back the same with the table's codec."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


class Sender:
    """Sends outbound messages with throttling, retries and pause handling, each at most once.

    Hot path (measured in docs/egress.md): every send costs one HTTP request and four Kafka
    records — the durable "sending" mark, the "sent" mark, the wamid index entry, the result.
    Through Faust's table and topic API each record went through a ``FutureMessage``, the
    producer's pending queue and its single drain task: ~0.4 ms of CPU per record, so the Kafka
    bookkeeping cost several times the HTTP call. The ``sent`` table's changelog records and the
    results are therefore appended to :class:`RecordBatches` on the app's own aiokafka producer
    (same topics, same bytes, same partitions), and the table's local view is set directly.
    A message's event is acknowledged only after every record it wrote has been acknowledged
    by the broker, so a committed offset never covers a record that could still be lost.
    """

    def __init__(self, ctx: StageContext, sent: Any, *, durable_marks: bool = True) -> None:
        self.ctx = ctx
        # The "sending" mark must be on the broker *before* the Graph call, or a kill -9 right
        # after the call forgets it and the restarted worker sends again (a crash test measured
        # 2 duplicates in 60 without this). Only that record is awaited before the call.
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
        # per chat: [lock, users]; dropped when its last user leaves, so memory follows the
        # chats in flight, not every chat ever served
        self.chat_locks: dict[str, list[Any]] = {}
        self.app: faust.App | None = None
        self._batches: RecordBatches | None = None
        self._codec = get_codec()
        self._changelog: str | None = None
        # the outbound partitions this worker consumes (``egress.sender_loop`` keeps it)
        self.owned_partitions: frozenset[int] | None = None
        self._retired: set[asyncio.Future[None]] = set()  # old batches closing (see batches())
        # only RocksDB keeps a persisted offset (the memory store's is a no-op)
        self._track_offsets = ctx.settings.store == "rocksdb"
        self._topic_names = {
            spec.name: ctx.topics.name(spec) for spec in (t.OUTBOUND_RESULTS, t.OUTBOUND_DLQ)
        }

    def bind(self, app: faust.App) -> None:
        """Write through ``app``'s producer in batches (without it: Faust's table/topic API).

        Only when the table's changelog is JSON-keyed and JSON-valued (the app's defaults):
        the fast path writes those bytes itself, and anything else would not recover.
        """
        changelog = self.sent.changelog_topic
        if changelog.key_serializer == "json" and changelog.value_serializer == "json":
            self.app = app
        else:  # pragma: no cover - a configuration this project does not use
            log.warning("sent table is not JSON: sender writes go through Faust's table API")

    def batches(self) -> RecordBatches | None:
        if self.app is None:
            return None
        producer = self.app.producer._ensure_producer()  # the aiokafka producer
        if self._batches is None or self._batches._producer is not producer:
            if self._batches is not None:
                # the app's producer was replaced: records still waiting in the old batches
                # fail (their messages are left for redelivery) instead of waiting forever
                closing = asyncio.ensure_future(self._batches.aclose())
                self._retired.add(closing)
                closing.add_done_callback(self._retired.discard)
            self._batches = RecordBatches(
                producer, self._persisted if self._track_offsets else None
            )
        return self._batches

    # --- Kafka writes ------------------------------------------------------------------------

    def _set(
        self, key: str, value: dict[str, Any], partition: int | None
    ) -> asyncio.Future[Any] | None:
        """Set ``sent[key]``: the local view now, the changelog record appended to its batch.

        Returns the record's future, resolved once the broker has acknowledged it (None on
        Faust's path, where the table's API writes the record). A plain function, not a
        coroutine: a send sets three entries, and its acks are awaited together at the end.
        """
        batches = self.batches() if partition is not None else None
        if batches is None:
            self.sent[key] = value
            return None
        set_local(self.sent, key, value, partition)
        if self._changelog is None:
            self._changelog = self.sent.changelog_topic.get_topic_name()
        # the bytes Faust writes for this table (``bind`` checked it uses JSON for both): a
        # JSON string key, a compact JSON value — recovery decodes them with the table's codecs
        return batches.append(self._changelog, partition, _json_bytes(key), _json_bytes(value))

    async def _write(
        self, key: str, value: dict[str, Any], partition: int | None, acks: list[Any] | None
    ) -> None:
        """:meth:`_set`, its future added to ``acks`` (awaited before the message is finished),
        or, without a list, awaited here."""
        fut = self._set(key, value, partition)
        if acks is not None:
            acks.append(fut)
        elif fut is not None:
            await fut

    def _persisted(self, topic: str, partition: int, offset: int) -> None:
        """What Faust's ``_on_changelog_sent`` does: RocksDB remembers the offset it holds."""
        self.sent.data.set_persisted_offset(TP(topic, partition), offset)

    async def _produce(
        self, spec: t.TopicSpec, key: bytes, value: dict[str, Any], acks: list[Any] | None
    ) -> None:
        batches = self.batches()
        if batches is None:
            await self.ctx.topics.of(spec).send(key=key, value=value)
            return
        name = self._topic_names[spec.name]
        producer = batches._producer
        if producer.client.cluster.partitions_for_topic(name) is None:
            await producer.client._wait_on_metadata(name)  # only until the topic is known
        # the partition Faust's send would pick: the key's murmur2 hash over the topic's
        # partitions, as every client does
        partition = self.app.producer.key_partition(name, key).partition  # type: ignore[union-attr]
        # trusted records built right here: the codec's field check is skipped (fastavro still
        # rejects a structurally wrong one)
        fut = batches.append(
            name, partition, key, self._codec.encode(spec.schema, value, validate=False)
        )
        if acks is None:
            await fut
        else:
            acks.append(fut)

    async def mark_sending(
        self, outbound_id: str, partition: int | None = None, chat_id: str | None = None
    ) -> None:
        """Record "sending" in the table and wait until its changelog record is acknowledged.

        The chat id rides along so that a status confirming an uncertain send can be turned
        into the same result the send would have published.
        """
        mark: dict[str, Any] = {"state": "sending", "at": _now_ms()}
        if chat_id is not None:
            mark["chat"] = chat_id
        if self.batches() is None or partition is None:
            if not self.durable_marks or partition is None:
                self.sent[outbound_id] = mark
                return
            set_local(self.sent, outbound_id, mark, partition)  # without the buffered write
            await self.sent.send_changelog(partition, outbound_id, mark)
            return
        pending = self._set(outbound_id, mark, partition)
        if self.durable_marks and pending is not None:
            await pending

    async def publish(
        self,
        message: dict[str, Any],
        result: dict[str, Any],
        dlq: bool,
        acks: list[Any] | None = None,
    ) -> None:
        key = f"{message['tenant_id']}:{message['chat_id']}".encode()
        await self._produce(t.OUTBOUND_RESULTS, key, result, acks)
        if dlq:
            number_key = f"{message['tenant_id']}:{message['phone_number_id']}".encode()
            await self._produce(t.OUTBOUND_DLQ, number_key, result, acks)
            DLQ.labels(str(result.get("error_code"))).inc()

    def bucket_for(self, phone_number_id: str, rate: float) -> TokenBucket:
        bucket = self.buckets.get(phone_number_id)
        if bucket is None or bucket.rate != rate:
            bucket = self.buckets[phone_number_id] = TokenBucket(rate, burst=max(1.0, rate / 10))
        return bucket

    # --- sending -----------------------------------------------------------------------------

    async def handle_durably(self, message: dict[str, Any], partition: int | None) -> None:
        """Send one message; returns once every Kafka record it wrote is acknowledged.

        The per-chat lock (taken first, FIFO) keeps parts of a chat in order; it is released
        before waiting for the records, so the next part need not wait for the broker.
        ``partition``: the source partition (the ``sent`` table's changelog partition), which
        the sender loop passes: outside Faust's streams there is no current event to read it
        from.

        Retried while a Kafka record is not acknowledged. A failed record is not a bad message:
        acknowledging the message would lose it (a failed "sending" mark comes before the Graph
        call). The retry is safe: the local view already holds the mark, so the retry
        reconciles before it sends. Past the attempts, or once the partition is gone, the
        message is left for redelivery. (One coroutine for the lock, the send and the retries:
        every suspension of a send resumes each coroutine level above it.)
        """
        key = f"{message['phone_number_id']}:{message['chat_id']}"
        for attempt in range(1, KAFKA_WRITE_ATTEMPTS + 1):
            entry = self.chat_locks.get(key)
            if entry is None:
                entry = self.chat_locks[key] = [asyncio.Lock(), 0]
            entry[1] += 1
            acks: list[asyncio.Future[Any] | None] = []
            try:
                try:
                    async with entry[0]:
                        await self._handle(message, partition, acks)
                finally:
                    entry[1] -= 1
                    if entry[1] == 0:
                        del self.chat_locks[key]
                for fut in acks:
                    if fut is not None:  # None: written through Faust's API
                        await fut
                return
            except KafkaError as exc:
                stopping = self.app is not None and self.app.should_stop
                if attempt == KAFKA_WRITE_ATTEMPTS or stopping or not self.owns(partition):
                    raise LeftForRedelivery(
                        f"{message['outbound_id']}: Kafka write failed {attempt} times ({exc!r})"
                    ) from exc
                log.warning("%s: Kafka write failed (%r), retrying",
                            message["outbound_id"], exc)  # fmt: skip
                await asyncio.sleep(min(30.0, 2.0**attempt))

    async def _handle(
        self, message: dict[str, Any], partition: int | None, acks: list[Any]
    ) -> None:
        outbound_id = message["outbound_id"]
        previous = self._view().get(outbound_id)
        if previous is not None and previous.get("state") != "retrying":
            if previous.get("state") not in UNCERTAIN_STATES:
                DUPLICATES.labels("sender").inc()
                return
            # a crash came between marking and recording: did the send happen?
            if not await self._reconcile(message, previous, partition, acks):
                return
        config = self.ctx.resources["config"]
        bot = await config.bot(message["phone_number_id"])
        if bot is None or not getattr(bot, "enabled", True):
            failed = {"state": "failed", "reason": "no bot", "at": _now_ms()}
            await self._write(outbound_id, failed, partition, acks)
            await self.publish(
                message,
                outbound_result(message, "failed", error_class="permanent", include_original=True),
                dlq=True,
                acks=acks,
            )
            return
        await self._send_with_retries(message, bot, partition, acks)

    def _view(self) -> Any:
        """The ``sent`` table's local view (the fast path writes it directly)."""
        return self.sent if self.app is None else self.sent.data

    async def _reconcile(
        self,
        message: dict[str, Any],
        previous: dict[str, Any],
        partition: int | None,
        acks: list[Any],
    ) -> bool:
        """An uncertain send (marked "sending", no response recorded): True to send it again.

        Read-typing actions have no status to wait for and are worth no duplicate: dropped.
        Otherwise the mark becomes "reconciling" (durably, before waiting, so a confirmation
        the statuses agent writes later is also later in the changelog), then the local view
        is watched for ``send_reconcile_s``: the statuses agent (same partition, same process)
        turns the entry into "sent" when a status names this outbound id.
        """
        outbound_id = message["outbound_id"]
        DUPLICATES.labels("sender").inc()
        if message["kind"] == "read_typing":
            dropped = {"state": "failed", "reason": "uncertain read receipt", "at": _now_ms()}
            await self._write(outbound_id, dropped, partition, acks)
            return False
        if self.settings.uncertain_sends == "dlq":
            # never resend: surface it for an operator instead
            await self._write(outbound_id, {"state": "uncertain", "at": _now_ms()}, partition, acks)
            await self.publish(
                message,
                outbound_result(message, "failed", error_class="uncertain", include_original=True),
                dlq=True,
                acks=acks,
            )
            RECONCILED.labels("dlq").inc()
            return False
        mark = {**previous, "state": "reconciling", "at": _now_ms()}
        mark.setdefault("chat", message["chat_id"])
        await self._write(outbound_id, mark, partition, None)
        deadline = time.monotonic() + self.settings.send_reconcile_s
        view = self._view()
        while time.monotonic() < deadline:
            current = view.get(outbound_id)
            # Only an entry that moved on is a confirmation. A *missing* entry is not: Faust's
            # memory store drops the keys of partitions a rebalance took away from this
            # worker, and reading that as "confirmed" acked the message unsent.
            if current is not None and current.get("state") not in UNCERTAIN_STATES:
                log.info("uncertain send %s confirmed by its status (%s)",
                         outbound_id, current.get("state"))  # fmt: skip
                RECONCILED.labels("confirmed").inc()
                return False
            if current is None and not self.owns(partition):
                raise LeftForRedelivery(f"uncertain send {outbound_id}: partition reassigned")
            await asyncio.sleep(0.2)
        if not self.owns(partition):
            # the partition's new owner has recovered the "reconciling" mark and reconciles it
            # itself; resending here as well could deliver the message twice
            raise LeftForRedelivery(f"uncertain send {outbound_id}: partition reassigned")
        log.warning("uncertain send %s: no status in %.0f s, sending again",
                    outbound_id, self.settings.send_reconcile_s)  # fmt: skip
        RECONCILED.labels("resent").inc()
        return True

    def owns(self, partition: int | None) -> bool:
        """Whether this worker still consumes ``partition`` of the outbound topic (the sender
        loop sets ``owned_partitions``; without one, as in unit tests, everything is owned)."""
        if self.owned_partitions is None or partition is None:
            return True
        return partition in self.owned_partitions

    async def confirm(self, status: dict[str, Any], partition: int | None) -> dict[str, Any] | None:
        """A status naming an uncertain send (by its callback data): record the send.

        Returns the wamid index entry written (so the caller can go on with the status), or
        None when the status confirms nothing uncertain.
        """
        outbound_id = status.get("callback_data")
        entry = self._view().get(outbound_id) if outbound_id else None
        if entry is None or entry.get("state") not in UNCERTAIN_STATES or "chat" not in entry:
            return None
        wamid = status["message_id"]
        await self._write(
            outbound_id, {"state": "sent", "wamid": wamid, "via": "status", "at": _now_ms()},
            partition, None,
        )  # fmt: skip
        request_id = outbound_id.rsplit(":", 1)[0]
        index = {
            "outbound_id": outbound_id, "request_id": request_id, "chat_id": entry["chat"],
            "status": "sent",
        }  # fmt: skip
        await self._write(f"w:{wamid}", index, partition, None)
        message = {
            "outbound_id": outbound_id, "request_id": request_id,
            "tenant_id": status["tenant_id"], "phone_number_id": status["phone_number_id"],
            "chat_id": entry["chat"],
        }  # fmt: skip
        await self.publish(message, outbound_result(message, "sent", wamid=wamid), dlq=False)
        return index

    async def _send_with_retries(
        self, message: dict[str, Any], bot: Any, partition: int | None, acks: list[Any]
    ) -> None:
        outbound_id = message["outbound_id"]
        pnid = message["phone_number_id"]
        read_typing = message["kind"] == "read_typing"
        # the request as composed, posted as is (no parse and re-serialisation per attempt)
        body: str = message["payload_json"]
        if not read_typing:
            body = with_callback_data(body, outbound_id)
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
                if not read_typing:
                    waited += await self.pacer.acquire(f"{pnid}:{message['chat_id']}")
                THROTTLE_WAIT.observe(waited)
            await self.mark_sending(outbound_id, partition, message["chat_id"])
            try:
                async with self.slots:
                    if read_typing:
                        payload = json.loads(body)
                        await self.graph.mark_read(
                            pnid,
                            bot.access_token,
                            payload["message_id"],
                            typing="typing_indicator" in payload,
                        )
                        wamid = None
                    else:
                        wamid = await self.graph.send_message(pnid, bot.access_token, body)
            except GraphApiError as err:
                # Meta answered with an error: nothing was sent, a retry cannot duplicate.
                # (A timeout is retried too; Meta documents no idempotency key, so that is the
                # one case where a duplicate is possible, and it is counted.)
                retrying = {"state": "retrying", "at": _now_ms()}
                await self._write(outbound_id, retrying, partition, acks)
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
                        acks=acks,
                    )
                    continue
                error_class = "permanent" if err.action is ErrorAction.PERMANENT else "retry"
                failed = {"state": "failed", "code": err.code, "at": _now_ms()}
                await self._write(outbound_id, failed, partition, acks)
                if read_typing:
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
                    acks=acks,
                )
                return
            sent = {"state": "sent", "wamid": wamid, "at": _now_ms()}
            acks.append(self._set(outbound_id, sent, partition))
            if wamid:
                # statuses arrive keyed like outbound messages (tenant:number): same partition
                index = {
                    "outbound_id": outbound_id,
                    "request_id": message["request_id"],
                    "chat_id": message["chat_id"],
                    "status": "sent",
                }
                acks.append(self._set(f"w:{wamid}", index, partition))
            _SENT.inc()
            if not read_typing:
                await self.publish(
                    message,
                    outbound_result(message, "sent", wamid=wamid, attempts=attempt),
                    dlq=False,
                    acks=acks,
                )
            return

    async def aclose(self) -> None:
        if self._batches is not None:
            await self._batches.aclose()
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
        options=table_options(settings),
    )
    sender = Sender(ctx, sent)
    sender.bind(app)
    ctx.resources["sender"] = sender
    results = ctx.topics.of(t.ANSWER_RESULTS)
    outbound = ctx.topics.of(t.OUTBOUND)

    @app.agent(results, name="compose")
    async def compose(stream: faust.StreamT) -> None:
        async for event in stream.events():
            result = event.value
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
        async for event in stream.events():
            status = event.value
            key = f"w:{status['message_id']}"
            known = sent.get(key)
            if known is None and status.get("callback_data"):
                # a send whose response a crash lost: its status says it happened
                known = await sender.confirm(status, event.message.partition)
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

    # the outbound topic is consumed outside Faust's streams (``egress.sender_loop``: why)
    ctx.resources["sender_loop"] = SenderLoop(
        app, ctx, sender, window=SEND_WINDOW_FACTOR * settings.send_concurrency
    )
