"""Replay a time range of a topic: export it, re-publish it, or rebuild conversation state.

Why a group-less, assign()-based consumer: live consumer groups must never notice a replay. The
consumer here has no group id, so it cannot join a group, commit, or move anyone's offsets; it
reads each partition from the first offset at ``start`` up to the end offset snapshotted when the
replay began (records produced meanwhile are not chased), then keeps the records whose timestamp
is in ``[start, end)``.

Offsets by time: ``offsets_for_times`` on Apache Kafka. The embedded broker answers that request
with offset 0 whatever the time, so there the scan starts at the log start; the timestamp filter
makes the result identical, only slower on long logs.

Partitions are read one after the other in partition order, so two runs over the same range see
the records in the same order: an export rerun rewrites an identical file, and a state rebuild is
deterministic.

Modes:
- ``export``: decoded records to JSONL or Parquet (:mod:`ops.export`), written atomically.
- ``to_topic``: the exact bytes (key, value, headers, timestamp) re-published to the same
  partition number of a target topic with the source's partition count. "Safe to rerun" means
  at-least-once re-publication: a rerun publishes the records again, and every downstream
  consumer dedupes on the ids inside them (wamid in, request and outbound ids out), so users
  never receive a reply twice. Re-publishing into a live pipeline topic is therefore harmless;
  into a fresh topic, a rerun doubles its records.
- ``rebuild_state``: conversation state per ``tenant:chat`` recomputed from the inbound, answer
  result and outbound result records of the range, by the live stage's own
  :class:`streams.conversation.ConversationHandler` with the record timestamps as its clock (see
  :func:`rebuild_states`), written as one JSON object keyed ``tenant:chat``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from onyx_wa import topics as t
from onyx_wa.kafka import consumer_kwargs, end_offsets, ensure_topics, start_producer
from onyx_wa.settings import Settings
from ops.export import AtomicFile, ExportRow, json_default, open_writer
from ops.lag import partition_counts
from schemas.codec import CodecError, get_codec

Mode = Literal["export", "to_topic", "rebuild_state"]
Progress = Callable[[int, int], None]
PROGRESS_EVERY = 1_000
EMPTY_POLLS_BEFORE_GIVING_UP = 10
STATE_TOPICS = (t.INBOUND, t.ANSWER_RESULTS, t.OUTBOUND_RESULTS)


class ReplayError(RuntimeError):
    """A replay that cannot run as asked; the message says why and what to do."""


@dataclass
class ReplaySummary:
    """What a replay read, kept and wrote (or would have written, on a dry run)."""

    mode: str
    topics: list[str]
    start: str
    end: str
    tenant: str | None
    target: str
    dry_run: bool
    scanned: int = 0  # records read within the offset ranges
    matched: int = 0  # in the time range and of the tenant: what was (or would be) processed
    written: int = 0  # rows exported, records re-published, or chats in the state file
    out_of_range: int = 0
    other_tenant: int = 0
    undecodable: int = 0
    failed: int = 0  # events the conversation handler raised on (rebuild_state)
    would_emit: dict[str, int] = field(default_factory=dict)  # rebuild_state: records per topic
    ranges: dict[str, list[int]] = field(default_factory=dict)  # "topic/partition": [from, to)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- topic names, time and tenant -----------------------------------------------------------


def resolve_topic(settings: Settings, topic: str) -> tuple[str, t.TopicSpec | None]:
    """A base name (``wa.inbound``) gets the settings' prefix; a full name is used as is."""
    for spec in t.ALL:
        if topic == spec.name:
            return t.full_name(spec, settings.topic_prefix), spec
        if topic.endswith("." + spec.name):
            return topic, spec
    return topic, None


def _ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ReplayError(f"{value.isoformat()} has no time zone: give one (e.g. +00:00 or Z)")
    return int(value.timestamp() * 1000)


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 (``Z`` allowed; naive means UTC), ``now``, or ``-2h`` / ``-30m`` / ``-7d``."""
    text = text.strip()
    now = dt.datetime.now(dt.UTC)
    if text == "now":
        return now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text.startswith("-") and text[-1:] in units and text[1:-1].isdigit():
        return now - dt.timedelta(seconds=int(text[1:-1]) * units[text[-1]])
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(
            f"cannot read time {text!r}: use ISO 8601, 'now' or -2h/-30m/-7d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def tenant_matches(tenant: str, key: bytes | None, record: dict[str, Any] | None) -> bool:
    """The record's ``tenant_id`` / ``tenant_ids`` when decoded, else the ``tenant:`` key prefix."""
    if record is not None:
        if "tenant_id" in record and record["tenant_id"] is not None:
            return record["tenant_id"] == tenant
        if "tenant_ids" in record:
            return tenant in (record["tenant_ids"] or [])
    return key is not None and key.startswith(f"{tenant}:".encode())


# --- reading a range ------------------------------------------------------------------------


@dataclass
class _Reader:
    """Reads records of several topics in ``[start, end)`` with one group-less consumer."""

    settings: Settings
    start_ms: int
    end_ms: int
    summary: ReplaySummary
    progress: Progress | None
    progress_every: int
    _consumer: AIOKafkaConsumer | None = None
    _total: int = 0

    async def plan(self, topics: list[str]) -> dict[TopicPartition, tuple[int, int]]:
        """[first, stop) offsets per partition; the stop is the end offset snapshot."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap_servers)
        await admin.start()
        try:
            counts = await partition_counts(admin, topics)
        finally:
            await admin.close()
        missing = [name for name in topics if name not in counts]
        if missing:
            raise ReplayError(f"topic(s) {', '.join(missing)} do not exist on the broker")
        tps = [TopicPartition(n, p) for n in topics for p in range(counts[n])]
        ends = await end_offsets(self.settings.bootstrap_servers, tps, embedded=self.settings.tansu)
        assert self._consumer is not None
        starts = await self._consumer.beginning_offsets(tps)
        if self.settings.tansu:
            first = {tp: starts[tp] for tp in tps}
            stop = dict(ends)
        else:
            at_start = await self._consumer.offsets_for_times({tp: self.start_ms for tp in tps})
            at_end = await self._consumer.offsets_for_times({tp: self.end_ms for tp in tps})
            first = {tp: ends[tp] if at_start[tp] is None else at_start[tp].offset for tp in tps}
            stop = {
                tp: ends[tp] if at_end[tp] is None else min(at_end[tp].offset, ends[tp])
                for tp in tps
            }
        plan = {tp: (max(first[tp], starts[tp]), stop[tp]) for tp in tps}
        for tp, (lo, hi) in plan.items():
            self.summary.ranges[f"{tp.topic}/{tp.partition}"] = [lo, max(lo, hi)]
        self._total = sum(max(0, hi - lo) for lo, hi in plan.values())
        return plan

    async def __aenter__(self) -> _Reader:
        self._consumer = AIOKafkaConsumer(**consumer_kwargs(self.settings, None))
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    def _tick(self) -> None:
        if self.progress and self.summary.scanned % self.progress_every == 0:
            self.progress(self.summary.scanned, self._total)

    async def records(self, plan: dict[TopicPartition, tuple[int, int]]) -> Any:
        """Async iterator of in-range records, partition by partition, in offset order."""
        consumer = self._consumer
        assert consumer is not None
        wanted = [tp for tp, (lo, hi) in plan.items() if hi > lo]
        if wanted:
            consumer.assign(wanted)
        for tp in wanted:
            lo, hi = plan[tp]
            consumer.seek(tp, lo)
            empty = 0
            while await consumer.position(tp) < hi:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=2_000)
                records = batch.get(tp, [])
                if not records:
                    empty += 1
                    if empty >= EMPTY_POLLS_BEFORE_GIVING_UP:
                        raise ReplayError(
                            f"{tp.topic}/{tp.partition} returned nothing at offset "
                            f"{await consumer.position(tp)} (expected records up to {hi})"
                        )
                    continue
                empty = 0
                for record in records:
                    if record.offset >= hi:
                        break
                    self.summary.scanned += 1
                    self._tick()
                    if not self.start_ms <= record.timestamp < self.end_ms:
                        self.summary.out_of_range += 1
                        continue
                    yield record
        if self.progress:
            self.progress(self.summary.scanned, self._total)


def _decode(record: ConsumerRecord) -> tuple[str | None, dict[str, Any] | None, str | None]:
    if record.value is None:
        return None, None, "tombstone (no value)"
    codec = get_codec()
    try:
        return codec.record_name_of(record.value), codec.decode(record.value), None
    except CodecError as exc:
        return None, None, str(exc)


# --- the entry point ------------------------------------------------------------------------


async def replay(
    settings: Settings,
    *,
    topic: str,
    start: dt.datetime,
    end: dt.datetime,
    tenant: str | None = None,
    mode: Mode,
    target: str | Path,
    dry_run: bool = False,
    progress: Progress | None = None,
    progress_every: int = PROGRESS_EVERY,
    config: Any = None,
) -> ReplaySummary:
    """Replay ``topic``'s records with timestamps in ``[start, end)``; see the module docstring.

    ``target``: the export file (``export``), the topic to publish to (``to_topic``), or the JSON
    state file (``rebuild_state``). ``dry_run`` reads and counts everything but writes nothing
    (no file, no topic, no record). ``config``: a ``streams.config.ConfigLookup`` for
    ``rebuild_state`` (default: no bot configuration, every chat with the default rules).
    """
    start_ms, end_ms = _ms(start), _ms(end)
    if end_ms <= start_ms:
        raise ReplayError(f"empty time range: {end.isoformat()} is not after {start.isoformat()}")
    name, spec = resolve_topic(settings, topic)
    if mode == "rebuild_state":
        if spec is not t.INBOUND:
            raise ReplayError(
                f"--rebuild-state reads the inbound topic ({t.INBOUND.name}), not {name}"
            )
        prefix = name[: -len(spec.name)].rstrip(".")
        topics = [t.full_name(s, prefix) for s in STATE_TOPICS]
    elif mode in ("export", "to_topic"):
        topics = [name]
    else:
        raise ReplayError(f"unknown replay mode {mode!r}")
    if mode == "to_topic" and str(target) in topics:
        raise ReplayError("the target topic is the source topic: that would replay forever")
    summary = ReplaySummary(
        mode=mode,
        topics=topics,
        start=start.isoformat(),
        end=end.isoformat(),
        tenant=tenant,
        target=str(target),
        dry_run=dry_run,
    )
    began = time.monotonic()
    async with _Reader(settings, start_ms, end_ms, summary, progress, progress_every) as reader:
        plan = await reader.plan(topics)
        if mode == "export":
            await _export(reader, plan, Path(target), spec, tenant, summary, dry_run)
        elif mode == "to_topic":
            await _to_topic(settings, reader, plan, str(target), tenant, summary, dry_run)
        else:
            await _rebuild(settings, reader, plan, Path(target), tenant, summary, dry_run, config)
    summary.elapsed_s = round(time.monotonic() - began, 3)
    return summary


async def _export(
    reader: _Reader,
    plan: dict[TopicPartition, tuple[int, int]],
    path: Path,
    spec: t.TopicSpec | None,
    tenant: str | None,
    summary: ReplaySummary,
    dry_run: bool,
) -> None:
    from ops.export import format_for

    format_for(path)  # fail on a bad suffix before reading anything
    writer = None
    try:
        async for record in reader.records(plan):
            name, decoded, error = _decode(record)
            if error:
                summary.undecodable += 1
            if tenant and not tenant_matches(tenant, record.key, decoded):
                summary.other_tenant += 1
                continue
            summary.matched += 1
            if dry_run:
                continue
            if writer is None:
                writer = open_writer(path, [spec.schema] if spec and spec.schema else [name or ""])
            row = ExportRow(
                record.topic,
                record.partition,
                record.offset,
                record.timestamp,
                record.key,
                record.value,
                name,
                decoded,
                error,
            )
            writer.write(row)
            summary.written += 1
        if not dry_run:
            if writer is None:  # nothing in range: still replace any previous export
                names = [spec.schema] if spec and spec.schema else []
                writer = open_writer(path, names)
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()


async def _to_topic(
    settings: Settings,
    reader: _Reader,
    plan: dict[TopicPartition, tuple[int, int]],
    target: str,
    tenant: str | None,
    summary: ReplaySummary,
    dry_run: bool,
) -> None:
    partitions = 1 + max((tp.partition for tp in plan), default=0)
    producer = None
    if not dry_run:
        try:
            await ensure_topics(
                settings.bootstrap_servers,
                {target: partitions},
                replication_factor=settings.replication_factor,
            )
        except RuntimeError as exc:
            raise ReplayError(f"cannot publish to {target}: {exc}") from None
        producer = await start_producer(settings)
    pending: list[Any] = []
    try:
        async for record in reader.records(plan):
            if tenant:
                _, decoded, _ = _decode(record)
                if not tenant_matches(tenant, record.key, decoded):
                    summary.other_tenant += 1
                    continue
            summary.matched += 1
            if producer is None:
                continue
            pending.append(
                await producer.send(
                    target,
                    value=record.value,
                    key=record.key,
                    partition=record.partition,
                    timestamp_ms=record.timestamp,
                    headers=list(record.headers or ()),
                )
            )
            if len(pending) >= 1_000:
                summary.written += await _settle(pending)
        summary.written += await _settle(pending)
    finally:
        if producer is not None:
            await producer.stop()


async def _settle(pending: list[Any]) -> int:
    """Wait for every send (a failure raises: the replay is incomplete and says so)."""
    done = 0
    for future in pending:
        await future
        done += 1
    pending.clear()
    return done


# --- rebuild_state --------------------------------------------------------------------------


class DefaultConfig:
    """No bot configuration: every chat gets the default rules (what an unknown bot gets live)."""

    async def bot(self, phone_number_id: str) -> None:
        return None

    async def chat(self, bot: Any, chat_id: str, is_group: bool) -> Any:
        from streams.config import DEFAULT_CHAT

        return DEFAULT_CHAT

    async def linked_email(self, bot: Any, sender_id: str) -> None:
        return None


@contextlib.contextmanager
def _clock(now_ms: int) -> Iterator[None]:
    """Make the conversation stage's clock read the record's timestamp during one event.

    The handler takes its time from ``streams.conversation._now_ms``; a rebuild must use event
    time to be deterministic. Safe while nothing else in this process runs the live stage (the
    replay runs in its own CLI process); a clock parameter on the handler would remove the need.
    """
    import streams.conversation as conversation

    saved = conversation._now_ms
    conversation._now_ms = lambda: now_ms
    try:
        yield
    finally:
        conversation._now_ms = saved


async def rebuild_states(
    settings: Settings,
    events: dict[str, list[list[tuple[int, str, bytes]]]],
    *,
    config: Any = None,
    summary: ReplaySummary | None = None,
) -> dict[str, dict[str, Any]]:
    """Fold each chat's events into its state with the live conversation handler.

    ``events[key]`` holds one list per source topic (inbound, answer results, outbound results),
    each ``(timestamp_ms, origin, value)`` in offset order; they are merged by timestamp (ties:
    inbound first) without reordering any one topic, so a chat sees its events as the live
    partition owner did. Local replies and requests the handler emits are counted, not sent.
    """
    from streams import state as st
    from streams.app import StageContext
    from streams.conversation import ConversationHandler

    codec = get_codec()
    config = config or DefaultConfig()
    ctx = StageContext(settings=settings, topics=None)  # type: ignore[arg-type]
    idle_ms = int(settings.conversation_idle_ttl_s * 1000)
    rank = {"inbound": 0, "answer": 1, "outbound_result": 2}
    states: dict[str, dict[str, Any]] = {}
    for key in sorted(events):
        state: dict[str, Any] | None = None
        for ts, origin, value in heapq.merge(
            *events[key], key=lambda event: (event[0], rank[event[1]])
        ):
            if state is None and origin != "inbound":
                continue  # as live: a result never creates state (a forgotten/expired chat)
            record = codec.decode(value)
            handler = ConversationHandler(ctx, config)
            current = st.load(state, now_ms=ts, idle_ttl_ms=idle_ms)
            try:
                with _clock(ts):
                    if origin == "inbound":
                        await handler.on_inbound(key, record, current)
                    elif origin == "answer":
                        handler.on_answer(key, record, current)
                    else:
                        handler.on_outbound_result(record, current)
            except Exception:  # the live stage skips such an event too (to wa.invalid)
                if summary is not None:
                    summary.failed += 1
                continue
            current["updated_at"] = ts
            state = None if handler.forget else current  # /forget: tombstoned live too
            if summary is not None:
                for spec, _, _ in handler.out:
                    summary.would_emit[spec.name] = summary.would_emit.get(spec.name, 0) + 1
        if state is not None:
            states[key] = state
    return states


async def _rebuild(
    settings: Settings,
    reader: _Reader,
    plan: dict[TopicPartition, tuple[int, int]],
    path: Path,
    tenant: str | None,
    summary: ReplaySummary,
    dry_run: bool,
    config: Any,
) -> None:
    origins = dict(zip(summary.topics, ("inbound", "answer", "outbound_result"), strict=True))
    events: dict[str, dict[str, list[tuple[int, str, bytes]]]] = {}
    async for record in reader.records(plan):
        _, decoded, error = _decode(record)
        if error or decoded is None or record.key is None:
            summary.undecodable += 1
            continue
        if tenant and not tenant_matches(tenant, record.key, decoded):
            summary.other_tenant += 1
            continue
        summary.matched += 1
        key = record.key.decode("utf-8", "replace")
        origin = origins[record.topic]
        per_topic = events.setdefault(key, {o: [] for o in origins.values()})
        per_topic[origin].append((record.timestamp, origin, record.value))
    ordered = {key: list(per_topic.values()) for key, per_topic in events.items()}
    states = await rebuild_states(settings, ordered, config=config, summary=summary)
    summary.written = len(states)
    if dry_run:
        return
    out = AtomicFile(path)
    try:
        out.tmp.write_text(
            json.dumps(states, default=json_default, sort_keys=True, indent=1) + "\n",
            encoding="utf-8",
        )
        out.commit()
    except BaseException:
        out.discard()
        raise


__all__ = [
    "DefaultConfig",
    "ReplayError",
    "ReplaySummary",
    "parse_time",
    "rebuild_states",
    "replay",
    "resolve_topic",
    "tenant_matches",
]
