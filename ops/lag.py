"""Consumer lag per group/topic/partition: offsets, messages, seconds and a Burrow-style status.

Why both messages and seconds: a lag of 5,000 records is nothing on a busy topic and an outage
on a quiet one; the age of the oldest unconsumed record is what an SRE can alert on. Why a
status over a window of samples (after LinkedIn's Burrow): a single lag figure cannot tell a
slow-but-working consumer from a stalled or stopped one, the movement of the committed offset can.

Two ways to read committed offsets, chosen by ``settings.tansu``:
- Apache Kafka: the admin API (``ListGroups`` and ``OffsetFetch``), which never touches a group.
- the embedded broker (Tansu), whose admin OffsetFetch fails:
  :func:`onyx_wa.kafka.committed_offsets` reads them through a consumer of the group that
  never subscribes (so it never joins or commits).
End offsets always come from :func:`onyx_wa.kafka.end_offsets`, which corrects Tansu's
"last batch's base offset + 1". Lag is clamped at 0 (a committed offset past the end is reported
as status ERR, not as a negative lag).
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from onyx_wa import topics as t
from onyx_wa.kafka import committed_offsets, consumer_kwargs, end_offsets
from onyx_wa.settings import Settings

# Topics each worker role consumes (its Faust agents' sources). Kept static so that the lag tool
# does not build Faust apps; tests/test_ops_lag.py checks it against streams.app.build_app.
ROLE_TOPICS: dict[str, tuple[t.TopicSpec, ...]] = {
    "streams": (t.RAW, t.INBOUND, t.ANSWER_RESULTS, t.OUTBOUND_RESULTS, t.FORGET),
    "answers": (t.ANSWER_REQUESTS, t.FEEDBACK),  # feedback-to-onyx (answers.feedback)
    "egress": (t.ANSWER_RESULTS, t.STATUSES),  # outbound: the sender group (SENDER_TOPICS)
    "analytics": (t.ANSWER_REQUESTS, t.ANSWER_RESULTS, t.FEEDBACK),
}
# the egress sender consumes outside Faust, in a group of its own (egress/sender_loop.py)
SENDER_TOPICS: tuple[t.TopicSpec, ...] = (t.OUTBOUND,)
ROLE_SETS: tuple[tuple[str, ...], ...] = (
    ("analytics", "answers", "egress", "streams"),
    ("streams",),
    ("answers",),
    ("egress",),
    ("analytics",),
)
DEFAULT_WINDOW = 10
RECORD_FETCH_TIMEOUT_S = 5.0


class LagStatus(enum.IntEnum):
    """Partition/group health; the numeric value is the exporter's gauge value (worse = higher)."""

    OK = 0
    WARN = 1  # lag grew across the whole window although the consumer commits
    STALL = 2  # the consumer stopped committing while records keep arriving
    STOP = 3  # neither commits nor new records for the window, with a backlog
    ERR = 4  # committed offset past the end, or offsets could not be read


# --- model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionLag:
    """One partition as a group sees it. ``committed`` None: the group never committed here."""

    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int
    lag_seconds: float
    status: LagStatus = LagStatus.OK
    error: str | None = None


@dataclass
class GroupLag:
    """One consumer group: its partitions and its worst partition status."""

    group: str
    partitions: list[PartitionLag] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> LagStatus:
        if self.error:
            return LagStatus.ERR
        return max((p.status for p in self.partitions), default=LagStatus.OK)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lag_seconds(self) -> float:
        return max((p.lag_seconds for p in self.partitions), default=0.0)


@dataclass
class LagReport:
    """Everything one collection found, with the wall-clock time it was taken at."""

    at: float
    groups: list[GroupLag] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "groups": [
                {
                    "group": g.group,
                    "status": g.status.name,
                    "lag": g.lag,
                    "lag_seconds": g.lag_seconds,
                    "error": g.error,
                    "partitions": [{**asdict(p), "status": p.status.name} for p in g.partitions],
                }
                for g in self.groups
            ],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def render_table(report: LagReport) -> str:
    """A fixed-width text table for terminals (one line per partition, a total per group)."""
    header = ("GROUP", "TOPIC", "PART", "COMMITTED", "END", "LAG", "LAG_S", "STATUS")
    rows: list[tuple[str, ...]] = []
    for g in report.groups:
        if g.error:
            rows.append((g.group, "-", "-", "-", "-", "-", "-", f"ERR {g.error}"))
            continue
        for p in g.partitions:
            rows.append(
                (
                    g.group,
                    p.topic,
                    str(p.partition),
                    "-" if p.committed is None else str(p.committed),
                    str(p.end),
                    str(p.lag),
                    f"{p.lag_seconds:.1f}",
                    p.status.name + (f" {p.error}" if p.error else ""),
                )
            )
        rows.append((g.group, "*", "*", "", "", str(g.lag), f"{g.lag_seconds:.1f}", g.status.name))
    if not rows:
        return "no consumer groups found"
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in (header, *rows))


# --- status over a window -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One observation of a partition for one group."""

    committed: int | None
    end: int
    lag: int
    error: bool = False


def evaluate(samples: Sequence[Sample]) -> LagStatus:
    """Burrow-style rules over the window, oldest sample first.

    ERR wins (the latest sample failed or committed > end); a partition whose latest lag is 0 is
    OK. With a backlog: the committed offset not moving over the window means STOP when the lag
    did not change either (nobody is producing or consuming) and STALL otherwise; a moving
    committed offset with a lag that never decreased and ended higher than it started is WARN.
    One sample cannot show movement, so it yields only OK or ERR.
    """
    samples = list(samples)
    if not samples:
        return LagStatus.OK
    last = samples[-1]
    if last.error or (last.committed is not None and last.committed > last.end):
        return LagStatus.ERR
    if last.lag == 0 or len(samples) < 2:
        return LagStatus.OK
    first = samples[0]
    committed_moved = any(s.committed != first.committed for s in samples[1:])
    if not committed_moved:
        if all(s.lag == first.lag for s in samples[1:]):
            return LagStatus.STOP
        return LagStatus.STALL
    lags = [s.lag for s in samples]
    if all(b >= a for a, b in zip(lags, lags[1:], strict=False)) and lags[-1] > lags[0]:
        return LagStatus.WARN
    return LagStatus.OK


class LagEvaluator:
    """Keeps the last ``window`` samples per (group, topic, partition) and rates each."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 2:
            raise ValueError("the window needs at least 2 samples to see movement")
        self.window = window
        self._samples: dict[tuple[str, str, int], deque[Sample]] = {}

    def observe(self, group: str, topic: str, partition: int, sample: Sample) -> LagStatus:
        samples = self._samples.setdefault((group, topic, partition), deque(maxlen=self.window))
        samples.append(sample)
        return evaluate(samples)

    def samples(self, group: str, topic: str, partition: int) -> list[Sample]:
        return list(self._samples.get((group, topic, partition), ()))

    def forget_except(self, keys: Iterable[tuple[str, str, int]]) -> None:
        """Drop partitions no longer reported (a deleted group must not pin memory forever)."""
        keep = set(keys)
        for key in list(self._samples):
            if key not in keep:
                del self._samples[key]


# --- which groups ---------------------------------------------------------------------------


def group_base(settings: Settings) -> str:
    """The prefix every pipeline group id starts with (see ``streams.app.app_id``)."""
    return f"{settings.topic_prefix}.onyx-wa-" if settings.topic_prefix else "onyx-wa-"


def known_groups(settings: Settings) -> dict[str, list[str]]:
    """Pipeline group id → the topics it consumes, for the usual worker role sets."""
    from egress.sender_loop import sender_group
    from streams.app import app_id

    groups: dict[str, list[str]] = {}
    for roles in ROLE_SETS:
        names = {t.full_name(spec, settings.topic_prefix) for r in roles for spec in ROLE_TOPICS[r]}
        group = app_id(settings, roles)
        groups[group] = sorted(names)
        if "egress" in roles:
            groups[sender_group(group)] = sorted(
                t.full_name(spec, settings.topic_prefix) for spec in SENDER_TOPICS
            )
    return groups


async def _list_groups(admin: AIOKafkaAdminClient) -> list[str]:
    listed = await admin.list_consumer_groups()
    return sorted({str(entry[0]) for entry in listed})


async def partition_counts(admin: AIOKafkaAdminClient, names: Iterable[str]) -> dict[str, int]:
    """Partitions per existing topic; absent topics are skipped (describing one may create it)."""
    present = sorted(set(await admin.list_topics()) & set(names))
    if not present:
        return {}
    counts: dict[str, int] = {}
    for meta in await admin.describe_topics(present):
        if meta.get("error_code", 0) == 0 and meta.get("partitions"):
            counts[meta["topic"]] = len(meta["partitions"])
    return counts


# --- collection -----------------------------------------------------------------------------


async def _committed_admin(
    admin: AIOKafkaAdminClient, group: str, partitions: list[TopicPartition] | None
) -> dict[TopicPartition, int | None]:
    """Real Kafka: OffsetFetch; ``-1`` (no commit for a named partition) becomes None."""
    fetched = await admin.list_consumer_group_offsets(group, partitions=partitions)
    return {tp: (meta.offset if meta.offset >= 0 else None) for tp, meta in fetched.items()}


async def _committed_for_group(
    settings: Settings,
    admin: AIOKafkaAdminClient,
    group: str,
    topics: list[str] | None,
    counts: Mapping[str, int],
) -> dict[TopicPartition, int | None]:
    """Committed offsets of ``group`` over ``topics`` (None = every topic it committed on)."""
    named = [TopicPartition(n, p) for n in (topics or []) if n in counts for p in range(counts[n])]
    if not settings.tansu:
        found = await _committed_admin(admin, group, named or None)
    else:
        if topics is None:  # Tansu cannot list a group's offsets: probe every pipeline topic
            named = [
                TopicPartition(n, p)
                for n in sorted({t.full_name(s, settings.topic_prefix) for s in t.ALL})
                if n in counts
                for p in range(counts[n])
            ]
        found = await committed_offsets(settings.bootstrap_servers, group, named)
    if topics is None:
        # every partition of each topic the group committed on: a partition it never committed
        # on still has a backlog it will read from the log start
        committed_topics = {tp.topic for tp, off in found.items() if off is not None}
        named = [
            TopicPartition(n, p) for n in sorted(committed_topics) for p in range(counts.get(n, 0))
        ]
    return {tp: found.get(tp) for tp in named}


async def _record_timestamps(
    settings: Settings, wanted: set[tuple[TopicPartition, int]]
) -> dict[tuple[TopicPartition, int], int]:
    """CreateTime (ms) of the record at each (partition, offset), read by a group-less consumer.

    A wanted offset may be a gap (compaction, transaction marker): the next record counts, which
    is the oldest record the group has still to consume.
    """
    if not wanted:
        return {}
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, None))
    await consumer.start()
    found: dict[tuple[TopicPartition, int], int] = {}
    try:
        by_tp: dict[TopicPartition, list[int]] = {}
        for tp, offset in wanted:
            by_tp.setdefault(tp, []).append(offset)
        consumer.assign(list(by_tp))
        for tp, offsets in by_tp.items():
            for offset in sorted(offsets):
                consumer.seek(tp, offset)
                deadline = time.monotonic() + RECORD_FETCH_TIMEOUT_S
                while time.monotonic() < deadline:
                    batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                    records = batch.get(tp)
                    if records:
                        found[(tp, offset)] = records[0].timestamp
                        break
    finally:
        await consumer.stop()
    return found


async def collect_lag(
    settings: Settings,
    groups: list[str] | None = None,
    *,
    evaluator: LagEvaluator | None = None,
    now: float | None = None,
) -> LagReport:
    """Measure lag for ``groups`` (default: the deployment's groups, discovered).

    Discovery lists the cluster's groups and keeps those whose id starts with the pipeline's
    group prefix; if listing fails, the known role-set group ids are used. Pass ``evaluator``
    (kept between calls) to get WARN/STALL/STOP; a fresh one can only say OK or ERR.
    """
    evaluator = evaluator or LagEvaluator()
    known = known_groups(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.kafka_client_id,
        request_timeout_ms=10_000,
    )
    await admin.start()
    try:
        if groups is None:
            try:
                listed = await _list_groups(admin)
                groups = [g for g in listed if g.startswith(group_base(settings))]
            except Exception:  # brokers without ListGroups: fall back to what we know
                groups = list(known)
        wanted_topics = {n for g in groups for n in known.get(g, [])}
        wanted_topics |= {t.full_name(s, settings.topic_prefix) for s in t.ALL}
        counts = await partition_counts(admin, wanted_topics)
        committed: dict[str, dict[TopicPartition, int | None]] = {}
        errors: dict[str, str] = {}
        for group in groups:
            try:
                committed[group] = await _committed_for_group(
                    settings, admin, group, known.get(group), counts
                )
            except Exception as exc:
                errors[group] = f"{type(exc).__name__}: {exc}"
    finally:
        await admin.close()

    partitions = sorted({tp for found in committed.values() for tp in found})
    ends = (
        await end_offsets(settings.bootstrap_servers, partitions, embedded=settings.tansu)
        if partitions
        else {}
    )
    starts = await _beginning_offsets(settings, partitions)
    pending: set[tuple[TopicPartition, int]] = set()
    for found in committed.values():
        for tp, off in found.items():
            position = starts.get(tp, 0) if off is None else off
            if position < ends.get(tp, 0):
                pending.add((tp, position))
    stamps = await _record_timestamps(settings, pending)
    now = time.time() if now is None else now

    report = LagReport(at=now)
    seen: list[tuple[str, str, int]] = []
    for group in groups:
        if group in errors:
            report.groups.append(GroupLag(group, error=errors[group]))
            continue
        glag = GroupLag(group)
        for tp in sorted(committed.get(group, {})):
            off = committed[group][tp]
            end = ends.get(tp, 0)
            position = starts.get(tp, 0) if off is None else off
            lag = max(0, end - position)
            error = None
            stamp = stamps.get((tp, position))
            if lag and stamp is None:
                error = f"no record readable at offset {position}"
            seconds = max(0.0, now - stamp / 1000) if lag and stamp is not None else 0.0
            sample = Sample(committed=off, end=end, lag=lag, error=error is not None)
            status = evaluator.observe(group, tp.topic, tp.partition, sample)
            seen.append((group, tp.topic, tp.partition))
            glag.partitions.append(
                PartitionLag(
                    tp.topic, tp.partition, off, end, lag, round(seconds, 3), status, error
                )
            )
        report.groups.append(glag)
    evaluator.forget_except(seen)
    return report


async def _beginning_offsets(
    settings: Settings, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Log start per partition: where a group with no commit starts (auto_offset_reset=earliest)."""
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, None))
    await consumer.start()
    try:
        return dict(await consumer.beginning_offsets(partitions))
    finally:
        await consumer.stop()


async def watch_lag(
    settings: Settings,
    groups: list[str] | None = None,
    *,
    interval_s: float = 5.0,
    window: int = DEFAULT_WINDOW,
    on_report: Callable[[LagReport], None] | None = None,
    iterations: int | None = None,
) -> None:
    """Collect every ``interval_s`` with one evaluator (for ``onyx-wa lag --watch``).

    ``on_report(report)`` is called after each collection; ``iterations`` bounds the loop.
    """
    evaluator = LagEvaluator(window)
    done = 0
    while iterations is None or done < iterations:
        started = time.monotonic()
        report = await collect_lag(settings, groups, evaluator=evaluator)
        if on_report is not None:
            on_report(report)
        done += 1
        if iterations is not None and done >= iterations:
            break
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


__all__ = [
    "GroupLag",
    "LagEvaluator",
    "LagReport",
    "LagStatus",
    "PartitionLag",
    "Sample",
    "collect_lag",
    "evaluate",
    "known_groups",
    "render_table",
    "watch_lag",
]
