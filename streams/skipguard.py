"""Put back the records Faust skips across a rebalance.

Why: the chaos ``rebalance`` scenario lost 1-6 questions of 48 in about one run in four. Logs
of the conversation agent showed the cause: a worker that kept a partition through a rebalance
processed offset 57 and then 64. Records 58-63 had been fetched before the rebalance, were
dropped from Faust's stream buffers as belonging to the old generation, and the fetcher went
on from 64 instead of seeking back, while the group's committed offset moved past them
(faust-streaming issues #216, #221 and #606 describe the same family of gaps; 0.15.3 is the
newest release). It happens on Apache Kafka as well as on the embedded broker: it is the
client, not the broker.

The guard watches the offsets each agent receives. On a partition this worker owned in both the
previous and the current assignment, nobody else can have processed records in between, so a
jump (57 → 64) can only be a skip: the guard seeks the partition back to the first missing
offset (58), and Faust delivers 58-63 again, followed by 64 onwards a second time. Every agent
downstream is idempotent (deterministic ids, dedupe tables, a sent-ids table), so the repeats
cost work, not correctness. A partition that was away and came back starts fresh, because
another worker may legitimately have consumed its records. Pipeline topics are never compacted,
so a gap there is never a legitimate one; changelogs (compacted) are not guarded.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import TP

from onyx_wa.metrics import SKIPPED_RECORDS

log = logging.getLogger(__name__)


class SkipGuard:
    """One per agent (shared by its concurrent actors): ``await guard.check(event.message)``
    before handling each event."""

    def __init__(self, app: Any, agent: str) -> None:
        self.app = app
        self.agent = agent
        self._next: dict[TP, int] = {}  # the offset expected next, per partition
        self._refill: dict[TP, int] = {}  # sought back to here; checks resume when it comes
        self._assigned: set[TP] = set()
        app.on_partitions_assigned.connect(self._on_assigned, weak=False)

    async def _on_assigned(self, sender: Any, assigned: Any = (), **_: Any) -> None:
        """Forget partitions that were not ours in the previous assignment as well."""
        now = set(assigned)
        kept = self._assigned & now
        for offsets in (self._next, self._refill):
            for tp in [tp for tp in offsets if tp not in kept]:
                del offsets[tp]
        self._assigned = now

    async def check(self, message: Any) -> bool:
        """Record ``message``'s offset; on a skip, seek back and return True.

        The caller still handles ``message`` (it is a real record, only early)."""
        tp, offset = message.tp, message.offset
        refill = self._refill.get(tp)
        if refill is not None:
            if offset == refill:  # the first missing record is back: resume checking
                del self._refill[tp]
                self._next[tp] = offset + 1
            return False
        expected = self._next.get(tp)
        self._next[tp] = offset + 1
        if expected is None or offset <= expected:
            return False  # first record of an assignment, in order, or a redelivery
        SKIPPED_RECORDS.labels(self.agent).inc(offset - expected)
        log.warning(
            "%s: offsets %d-%d of %s[%d] were skipped by the consumer; seeking back to %d",
            self.agent, expected, offset - 1, tp.topic, tp.partition, expected,
        )  # fmt: skip
        self._refill[tp] = expected
        await self.app.consumer.seek(tp, expected)
        return True
