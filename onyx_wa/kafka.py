"""Kafka client settings, topic creation and every embedded-broker quirk, in one place.

Why one module: the code elsewhere must be correct on real Apache Kafka. Where Tansu (the
embedded broker) differs, the difference is handled here and documented in DEVELOPERS.md, so
nothing else needs an ``if embedded`` branch.

Quirks handled here:
- idempotent / transactional producers fail on Tansu (InitProducerId): producers run with
  ``acks=all`` and ``enable_idempotence=False``; consumers are idempotent instead.
- a producer auto-creating a topic gets the broker's default partition count, and Faust then
  crashes with PartitionsMismatch: :func:`ensure_topics` creates every topic up front.
- the admin client's OffsetFetch fails on Tansu: :func:`committed_offsets` reads committed
  offsets through a consumer of the group, which works on both brokers.
- ``end_offsets`` on Tansu returns the last batch's base offset + 1, not the high watermark:
  :func:`end_offsets` reads the tail on the embedded broker to find the true end, and
  :func:`patch_faust_for_tansu` makes Faust's table recovery use it — otherwise a restarted
  worker stops recovering a changelog before the last records of its last batch (a kill -9
  test of the sender caught this as a duplicate send).
- Tansu may hold a fetch for the whole ``fetch_max_wait_ms`` when it covers several partitions
  (Kafka answers as soon as any has data); Faust hard-codes 1,500 ms, so
  :func:`patch_faust_for_tansu` shortens it to :data:`TANSU_FETCH_MAX_WAIT_MS` for Faust workers,
  and :func:`consumer_kwargs` for plain consumers (the egress sender's: aiokafka's default 500 ms
  added ~0.25 s to every reply at low rates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from onyx_wa.settings import Settings
from onyx_wa.topics import ALL, TopicSpec, full_name

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The broker did not answer; the message names the address and the fix."""


# --- client settings ----------------------------------------------------------------------------


def producer_kwargs(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Producer settings for throughput with durable acks (and no idempotence: see quirks)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 2,
        "max_batch_size": 256 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        "request_timeout_ms": int(settings.publish_timeout_s * 1000) + 1000,
    }
    kwargs.update(overrides)
    return kwargs


def consumer_kwargs(settings: Settings, group_id: str | None, **overrides: Any) -> dict[str, Any]:
    """Consumer settings: manual commits (at-least-once), earliest on a new group."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": int(settings.kafka_session_timeout_s * 1000),
        "heartbeat_interval_ms": 1_000,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_bytes": 16 * 1024 * 1024,
    }
    if settings.tansu:  # it holds a fetch for the whole wait (see the module docstring)
        kwargs["fetch_max_wait_ms"] = TANSU_FETCH_MAX_WAIT_MS
    kwargs.update(overrides)
    return kwargs


def faust_broker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App`` that make it safe and fast on both brokers.

    Why each one:
    - ``processing_guarantee=at_least_once``: exactly_once needs transactions (Tansu lacks
      them, and Faust's implementation is unreliable anyway); consumers dedupe instead.
    - pipeline topics are created up front by :func:`ensure_topics` (a producer racing ahead
      would auto-create them with the broker default); Faust declares only what it owns
      (changelog topics) with ``topic_partitions``. ``topic_disable_leader``: no leader topic.
    - ``broker_session_timeout`` 10 s (Faust's default is 60 s): the embedded broker holds a
      JoinGroup for half the session timeout, waiting for other members, before it completes the
      join. Measured here: 60 s session → first record after 31 s; 10 s → 6 s; 6 s → 4.8 s, and the
      rebalance timeout made no difference. That was the "~30 s Faust group join". Real Kafka
      waits ``group.initial.rebalance.delay.ms`` (3 s) instead. 10 s is also aiokafka's default
      and tolerant of a busy 2-core machine; tests set ``ONYX_WA_KAFKA_SESSION_TIMEOUT_S=6``.
    """
    return {
        "broker": f"kafka://{settings.bootstrap_servers}",
        "broker_client_id": settings.kafka_client_id,
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "producer_linger_ms": 10,
        "producer_max_request_size": 8 * 1024 * 1024,
        "producer_request_timeout": 30.0,
        "broker_session_timeout": settings.kafka_session_timeout_s,
        "broker_heartbeat_interval": min(1.0, settings.kafka_session_timeout_s / 3),
        "broker_rebalance_timeout": 20.0,
        "broker_commit_every": 1000,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": True,
        "topic_disable_leader": True,
        # False: a stop or a rebalance does not wait for the events in hand. True (Faust's
        # default) hung a SIGTERM'd worker for over 60 s in a clean-clone CI run (the sender's
        # noack stream); every stage is idempotent, so an event cut off is simply redone
        "stream_wait_empty": False,
    }


class CachedPartitioner:
    """Kafka's default partitioner (murmur2 of the key), remembering the hashes of recent keys.

    Why: aiokafka's murmur2 is pure Python (about 5 µs a key), and the pipeline partitions the
    same ``tenant:chat`` key several times per message (wa.inbound, wa.classified, the answer
    request) and again for each later message of the chat. The partitions are exactly the
    default partitioner's; only the hashing is skipped. At most ``size`` keys are kept (about
    100 bytes each); a full cache starts over.
    """

    def __init__(self, size: int = 8_192) -> None:
        self.size = size
        self._hashes: dict[bytes, int] = {}
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:  # no key: the default's random choice
            return self._default(key, all_partitions, available)
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self.size:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


# --- broker reachability and topics -------------------------------------------------------------


async def wait_for_broker(bootstrap_servers: str, timeout_s: float = 10.0) -> None:
    """Return once the broker answers a metadata request; else :class:`BrokerUnavailable`."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2_000)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=timeout_s)
    except Exception as exc:
        raise BrokerUnavailable(
            f"Kafka broker at {bootstrap_servers} is unreachable ({type(exc).__name__}): start "
            f"it (onyx-wa broker) or fix KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await client.close()


def planned_topics(settings: Settings, prefix: str | None = None) -> dict[str, int]:
    """Every topic of the pipeline under ``prefix`` with its partition count."""
    pfx = settings.topic_prefix if prefix is None else prefix
    return {full_name(spec, pfx): settings.partitions for spec in ALL}


def planned_topic_configs(
    settings: Settings, prefix: str | None = None
) -> dict[str, dict[str, str]]:
    """Per-topic configs set at creation: ``retention.ms`` from the retention settings.

    Existing topics are not altered (see docs/privacy.md for ``kafka-configs --alter``).
    """
    from onyx_wa.topics import RAW_TOPICS, SHORT_TOPICS

    pfx = settings.topic_prefix if prefix is None else prefix

    def hours(value: float) -> str:
        return str(int(value * 3600 * 1000))

    configs: dict[str, dict[str, str]] = {}
    for spec in ALL:
        if spec in RAW_TOPICS:
            retention = settings.raw_retention_hours
        elif spec in SHORT_TOPICS:
            retention = settings.forget_retention_hours
        else:
            retention = settings.event_retention_hours
        configs[full_name(spec, pfx)] = {
            "cleanup.policy": "compact" if spec.compacted else "delete",
            "retention.ms": hours(retention),
        }
    return configs


def changelog_topic_configs(settings: Settings) -> dict[str, str]:
    """Configs for Faust table changelogs: how soon compaction drops tombstoned state."""
    lag_ms = str(int(settings.state_compaction_lag_hours * 3600 * 1000))
    return {"max.compaction.lag.ms": lag_ms, "segment.ms": lag_ms}


async def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    compacted: Iterable[str] = (),
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create missing topics with the given partitions; fail loudly on a partition mismatch.

    Idempotent: existing topics with the right partition count are left alone. A mismatch is an
    error rather than a warning because keyed ordering (tenant:chat) depends on it.
    """
    compacted = set(compacted)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = await _partition_counts(admin, list(topics))
        missing = [
            NewTopic(
                name,
                num_partitions=parts,
                replication_factor=replication_factor,
                topic_configs={
                    **(dict(configs.get(name, {})) if configs else {}),
                    **({"cleanup.policy": "compact"} if name in compacted else {}),
                },
            )
            for name, parts in topics.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            existing = await _partition_counts(admin, list(topics))
        for name, parts in topics.items():
            got = existing.get(name)
            if got is None:
                raise BrokerUnavailable(f"topic {name} could not be created")
            if got != parts:
                raise RuntimeError(
                    f"topic {name} has {got} partitions, expected {parts}: set ONYX_WA_PARTITIONS "
                    f"to {got} or recreate the topic"
                )
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition count per existing topic among ``names`` (absent topics are omitted).

    Lists first and describes only existing topics: a metadata request naming an absent topic
    auto-creates it on brokers that allow that (Tansu does), with the wrong partition count.
    """
    present = set(await admin.list_topics()) & set(names)
    if not present:
        return {}
    metadata = await admin.describe_topics(sorted(present))
    counts: dict[str, int] = {}
    for topic in metadata:
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            counts[topic["topic"]] = len(topic["partitions"])
    return counts


async def ensure_pipeline_topics(settings: Settings, prefix: str | None = None) -> dict[str, int]:
    """Create every pipeline topic for ``settings`` (used by ``broker``, ``up``, tests)."""
    topics = planned_topics(settings, prefix)
    await ensure_topics(
        settings.bootstrap_servers,
        topics,
        replication_factor=settings.replication_factor,
        configs=planned_topic_configs(settings, prefix),
    )
    return topics


# --- offsets (lag, replay) ----------------------------------------------------------------------


async def end_offsets(
    bootstrap_servers: str,
    partitions: list[TopicPartition],
    *,
    embedded: bool,
    tail_timeout_s: float = 30.0,
) -> dict[TopicPartition, int]:
    """The high watermark per partition, correct on both brokers.

    On Tansu ``end_offsets`` reports the last batch's base offset + 1; when that batch held
    several records the true end is further on, so we read the tail and take the last offset + 1.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        reported = await consumer.end_offsets(partitions)
        if not embedded:
            return dict(reported)
        consumer.assign(partitions)
        exact: dict[TopicPartition, int] = {}
        for tp in partitions:
            end = reported[tp]
            if end == 0:
                exact[tp] = 0
                continue
            consumer.seek(tp, end - 1)
            # the batch holding offset end - 1 exists: an empty fetch before it arrived is the
            # broker being slow (Tansu may hold a fetch for its whole wait), not the end. Taking
            # it as the end under-reported the watermark under load, and Faust's recovery then
            # stalled the worker with a ConsistencyError (found by the chaos rebalance run).
            deadline = asyncio.get_running_loop().time() + tail_timeout_s
            seen_tail = False
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
                records = batch.get(tp, [])
                if records:
                    seen_tail = True
                    end = max(end, records[-1].offset + 1)
                    continue
                if seen_tail:
                    break
                if asyncio.get_running_loop().time() >= deadline:
                    raise BrokerUnavailable(
                        f"cannot read the tail of {tp.topic}[{tp.partition}] within "
                        f"{tail_timeout_s:g} s to find its true end offset"
                    )
            exact[tp] = end
        return exact
    finally:
        await consumer.stop()


_FAUST_PATCHED = False
TANSU_FETCH_MAX_WAIT_MS = 50


def patch_faust_for_tansu() -> None:
    """Faust on Tansu: true high watermarks for table recovery, short fetch waits (idempotent)."""
    global _FAUST_PATCHED
    if _FAUST_PATCHED:
        return
    from faust.transport.drivers import aiokafka as driver

    async def exact_highwaters(self: Any, partitions: Any) -> dict[Any, int]:
        consumer = self._ensure_consumer()
        bootstrap = consumer._client._bootstrap_servers
        if not isinstance(bootstrap, str):
            bootstrap = ",".join(bootstrap)
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        exact = await end_offsets(bootstrap, tps, embedded=True)
        by_key = {(tp.topic, tp.partition): value for tp, value in exact.items()}
        return {tp: by_key[(tp.topic, tp.partition)] for tp in partitions}

    driver.AIOKafkaConsumerThread._highwaters = exact_highwaters  # type: ignore[method-assign]

    # Faust hard-codes fetch_max_wait_ms=1500. Kafka answers a fetch as soon as any partition
    # has data; Tansu often holds it for the full wait when the request covers several
    # partitions (measured: 15-730 ms delivery delays at 1,500 ms, 4-62 ms at 100 ms), which
    # added ~0.6 s per hop under light load. A short wait costs a few idle fetches per second.
    create = driver.AIOKafkaConsumerThread._create_worker_consumer

    def short_fetch_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        consumer = create(self, *args, **kwargs)
        consumer._fetch_max_wait_ms = TANSU_FETCH_MAX_WAIT_MS  # read by start()'s Fetcher
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = short_fetch_wait  # type: ignore[method-assign]
    _FAUST_PATCHED = True


async def committed_offsets(
    bootstrap_servers: str, group_id: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """Committed offsets of ``group_id`` without joining it (works on Tansu and Kafka).

    The consumer never subscribes, so it never joins the group or moves its offsets.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()


async def start_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A started producer with :func:`producer_kwargs`; raises :class:`BrokerUnavailable`."""
    producer = AIOKafkaProducer(**producer_kwargs(settings, **overrides))
    try:
        await asyncio.wait_for(producer.start(), timeout=settings.publish_timeout_s + 5)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise BrokerUnavailable(
            f"Kafka broker at {settings.bootstrap_servers} is unreachable ({type(exc).__name__}): "
            f"start it (onyx-wa broker) or fix KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    return producer


__all__ = [
    "BrokerUnavailable",
    "TopicSpec",
    "committed_offsets",
    "consumer_kwargs",
    "end_offsets",
    "ensure_pipeline_topics",
    "planned_topic_configs",
    "changelog_topic_configs",
    "ensure_topics",
    "faust_broker_settings",
    "planned_topics",
    "producer_kwargs",
    "start_producer",
    "wait_for_broker",
]
