"""Keep Faust's consumer from skipping records or committing past records it never processed.

Why: the chaos ``kill-worker`` and ``rebalance`` scenarios lost questions (1-6 of 48 in about
one run in four). Instrumented workers showed a partition kept through a rebalance go from
offset 57 to 64, and then the group's committed offset move past 58-63. Reading
faust-streaming 0.15.3 (the newest release) explains both halves:

- **The skip.** ``Consumer.getmany`` reads the consumer generation *after* awaiting the fetch.
  A fetch that was in flight across a rebalance returns records from the old position (64...)
  after the recovery has sought the partition back to the committed offset (58), and they pass
  as the new generation's. The drain loop then sets its read offset to 64 and drops 58-63 when
  they arrive, as already read.
- **The commit past them.** The drain loop treats any jump in offsets as a legitimate *gap*
  (compaction, transaction markers) and marks the missing offsets, and the jumped-to record
  itself, as committable. ``Consumer._new_offset`` also accepts a first acked offset one above
  the committed one, so with concurrent actors (the answers and sender stages) record 58 still
  being processed does not stop a commit of 59-60: a kill -9 then loses 58.

On pipeline topics neither is ever legitimate: they are never compacted, and no producer here
is transactional. So the :class:`GuardedConsumer` (installed by :func:`install`) does three
things, on every topic except the tables' changelogs (compacted, read by table recovery):

1. :class:`ReadOffsets` replaces the drain loop's read-offset map. It knows which offset must
   come next on each partition; when a later one is delivered, it *pins* the read offset at the
   first missing one (so the drain loop lets the re-fetched records through instead of dropping
   them) and the consumer seeks back there. Records delivered in between are handled early and
   again later: every stage is idempotent (deterministic ids, dedupe tables, sent-ids table).
2. The drain loop's gaps are not recorded, so a hole is never committable.
3. A commit must start exactly at the committed offset: no first-offset-plus-one slack.

If a hole's records never come back (deleted by retention before they were read), the pin is
released after :data:`PIN_TIMEOUT_S` seconds, the hole is committed over, and
``onyx_wa_consumer_lost_records_total`` counts it: a loud, bounded failure instead of a stall.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP

from onyx_wa.metrics import CONSUMER_LOST_RECORDS, SKIPPED_RECORDS
from streams import delivery_guard

log = logging.getLogger(__name__)

PIN_TIMEOUT_S = 60.0
SEEK_ATTEMPTS = 5
SEEK_RETRY_S = 1.0


class ReadOffsets(defaultdict):
    """Faust's ``Consumer._read_offset`` (partition → last offset read) with skip detection.

    The drain loop reads it (a record passes when ``offset >= read offset``) and writes it after
    handing each record to the streams; Faust's seeks write it too. Guarded partitions also keep
    the offset that must be delivered next; a delivery beyond it is a skip.
    """

    def __init__(
        self,
        guarded: Callable[[TP], bool],
        on_skip: Callable[[TP, int, int], None],
        on_lost: Callable[[TP, int, int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(lambda: None)
        self._guarded = guarded
        self._on_skip = on_skip
        self._on_lost = on_lost
        self._clock = clock
        self._next: dict[TP, int] = {}
        self._first: dict[TP, int] = {}  # first offset delivered since the last seek
        self._pins: dict[TP, tuple[int, float]] = {}  # first missing offset, since when

    def expected(self, tp: TP) -> int | None:
        """The offset that must be delivered next on ``tp`` (None: not known yet)."""
        return self._next.get(tp)

    def first_delivered(self, tp: TP) -> int | None:
        """The first offset delivered on ``tp`` since it was last sought (None: none yet)."""
        return self._first.get(tp)

    def pinned(self, tp: TP) -> int | None:
        """The first missing offset ``tp`` waits for after a skip, if any."""
        pin = self._pins.get(tp)
        return None if pin is None else pin[0]

    def __setitem__(self, tp: TP, offset: Any) -> None:
        """The drain loop delivered ``offset`` (or recovery sought a changelog there)."""
        if offset is None or not self._guarded(tp):
            super().__setitem__(tp, offset)
            return
        pin = self._pins.get(tp)
        if pin is not None:
            missing, since = pin
            if offset == missing:  # the first missing record is back
                del self._pins[tp]
            elif self._clock() - since < PIN_TIMEOUT_S:
                return  # a record fetched ahead of the hole: handled early, read again later
            else:
                del self._pins[tp]
                self._on_lost(tp, missing, offset)
        else:
            expected = self._next.get(tp)
            if expected is not None and offset > expected:
                self._pins[tp] = (expected, self._clock())
                super().__setitem__(tp, expected)  # lets the re-fetched records through
                self._on_skip(tp, expected, offset)
                return
        super().__setitem__(tp, offset)
        self._next[tp] = offset + 1
        self._first.setdefault(tp, offset)

    def rewind(self, tp: TP, offset: int | None) -> None:
        """The partition was sought to ``offset``: that is the next record to read."""
        self._forget(tp)
        super().__setitem__(tp, offset)
        if offset is not None:
            self._next[tp] = offset

    def update(self, other: Any = (), **kwargs: Any) -> None:  # type: ignore[override]
        """``perform_seek``: every partition back to its committed offset (the next to read)."""
        for tp, offset in dict(other, **kwargs).items():
            self.rewind(tp, offset)

    def pop(self, tp: TP, *default: Any) -> Any:  # type: ignore[override]
        """A revoked partition: whoever gets it next starts from the committed offset."""
        self._forget(tp)
        return super().pop(tp, *default)

    def __delitem__(self, tp: TP) -> None:
        self._forget(tp)
        super().__delitem__(tp)

    def _forget(self, tp: TP) -> None:
        self._next.pop(tp, None)
        self._pins.pop(tp, None)
        self._first.pop(tp, None)


class GuardedConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer with the three guards of this module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guarded_cache: dict[TP, bool] = {}
        self._seeks: set[asyncio.Task[None]] = set()
        self._read_offset = ReadOffsets(self._is_guarded, self._on_skip, self._on_lost)

    async def _commit(self, offsets: Any) -> bool:
        """Commit, unless an output the broker refused would be committed over.

        Runs after Faust's ``producer.flush()``: every record produced for these offsets is
        resolved by now (``streams.delivery_guard``).
        """
        if self.app.crashed:  # whatever crashed it, the work since the last commit is redone
            return False
        failure = delivery_guard.undelivered(self.app)
        if failure is not None:
            log.critical("not committing %d partition(s): %s", len(offsets), failure)
            await self.app.crash(failure)
            return False
        return await super()._commit(offsets)

    def _is_guarded(self, tp: TP) -> bool:
        guarded = self._guarded_cache.get(tp)
        if guarded is None:  # tables are all declared before the worker starts consuming
            guarded = self._guarded_cache[tp] = not self._is_changelog_tp(tp)
        return guarded

    def _on_skip(self, tp: TP, missing: int, delivered: int) -> None:
        SKIPPED_RECORDS.labels(tp.topic).inc(delivered - missing)
        log.warning(
            "the consumer skipped offsets %d-%d of %s[%d]; reading them again",
            missing, delivered - 1, tp.topic, tp.partition,
        )  # fmt: skip
        task = asyncio.ensure_future(self._seek_back(tp, missing))
        self._seeks.add(task)
        task.add_done_callback(self._seeks.discard)

    async def _seek_back(self, tp: TP, offset: int) -> None:
        """Seek, retrying while the partition still waits for ``offset`` (a failed seek would
        otherwise leave the pin to time out and the hole to be committed over)."""
        for attempt in range(SEEK_ATTEMPTS):
            if self._read_offset.pinned(tp) != offset:
                return  # refilled, revoked or sought elsewhere meanwhile
            try:
                await self._seek(tp, offset)
                return
            except Exception as exc:
                log.warning(
                    "could not seek %s[%d] back to %d (attempt %d): %r",
                    tp.topic, tp.partition, offset, attempt + 1, exc,
                )  # fmt: skip
                await asyncio.sleep(SEEK_RETRY_S)

    def _on_lost(self, tp: TP, missing: int, delivered: int) -> None:
        """The hole's records never came back: commit over it rather than stall the partition."""
        CONSUMER_LOST_RECORDS.labels(tp.topic).inc(delivered - missing)
        log.error(
            "offsets %d-%d of %s[%d] could not be read again within %.0f s (deleted by "
            "retention?); committing past them",
            missing, delivered - 1, tp.topic, tp.partition, PIN_TIMEOUT_S,
        )  # fmt: skip
        self._gap[tp].addi(missing, delivered)
        self._gap[tp].merge_overlaps()

    async def seek(self, partition: TP, offset: int) -> None:
        await self._seek(partition, offset)
        self._read_offset.rewind(partition, offset if offset else None)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if not self._is_guarded(tp):
            await super()._add_gap(tp, offset_from, offset_to)

    def _new_offset(self, tp: TP) -> int | None:
        if self._is_guarded(tp):
            committed = self._committed_offset[tp]
            if committed is None:  # a new group: nothing committed yet, so the first record
                committed = self._read_offset.first_delivered(tp)  # read is the floor
            acked = self._acked[tp]
            if committed is not None and acked:
                gap = self._gap[tp]
                first = min(min(acked), gap.begin()) if gap else min(acked)
                if first > committed:
                    return None  # the committed record itself is not processed yet
        return super()._new_offset(tp)


def install(app: Any) -> None:
    """Make ``app`` build a :class:`GuardedConsumer` (before its consumer is first used)."""
    transport = app.transport
    if not issubclass(transport.Consumer, GuardedConsumer):
        transport.Consumer = GuardedConsumer
