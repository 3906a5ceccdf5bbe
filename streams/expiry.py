"""Expire idle conversations: drop them from the state table *and* its changelog.

Why a sweep and not only lazy expiry: ``state.load`` already treats an idle conversation as new,
but the key would stay in memory (or RocksDB) and in the compacted changelog forever. The sweep
runs on a timer, outside any stream event, so it cannot use ``del table[key]`` (Faust needs the
current event to know the partition). It computes the partition the way the producer placed the
key — the Kafka default partitioner, murmur2 of the key bytes — writes a tombstone to that
changelog partition and removes the key from the local store. It only touches partitions this
worker actively owns, so a key that moved to another worker in a rebalance is left to it.

A conversation written meanwhile by the agent is safe: the agent loads, updates ``updated_at``
and writes back after the sweep's check, so an active chat is never lost; at worst a chat idle
for longer than the TTL gets a tombstone and then a fresh state, which is what lazy expiry does
anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import murmur2

from onyx_wa.metrics import CONVERSATIONS_EXPIRED

log = logging.getLogger(__name__)

CHUNK = 1_000  # keys checked between yields to the event loop


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (same as our producers)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def tombstone(table: Any, key: str, partition: int) -> None:
    """Delete ``key``: a tombstone on its changelog ``partition`` and out of the local store.

    Works outside stream iteration (``del table[key]`` needs the current event for the
    partition); the conversation agent also uses it for /forget and forget requests.
    """
    table.send_changelog(partition, key, None, value_serializer="raw")
    table.data.pop(key, None)


def owned_partitions(app: Any, topic: str) -> set[int]:
    """Partitions of ``topic`` this worker actively owns (empty while rebalancing)."""
    try:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
    except Exception:  # not assigned yet
        return set()


def is_idle(value: Any, *, now_ms: int, idle_ms: int) -> bool:
    return not value or now_ms - int(value.get("updated_at", 0)) > idle_ms


async def expire_idle(
    table: Any,
    *,
    now_ms: int,
    idle_ms: int,
    partitions: int,
    owned: set[int],
    keys: Iterable[str] | None = None,
) -> int:
    """Tombstone and drop every idle conversation in ``owned`` partitions; returns the count.

    ``keys`` limits the sweep (tests and the admin's "forget" use it); by default all local keys.
    """
    candidates = list(table.data.keys()) if keys is None else list(keys)
    expired = 0
    for start in range(0, len(candidates), CHUNK):
        for key in candidates[start : start + CHUNK]:
            value = table.data.get(key)
            if value is None or not is_idle(value, now_ms=now_ms, idle_ms=idle_ms):
                continue
            partition = partition_of(key, partitions)
            if partition not in owned:
                continue
            tombstone(table, key, partition)
            expired += 1
        await asyncio.sleep(0)  # let the agents run between chunks
    if expired:
        CONVERSATIONS_EXPIRED.inc(expired)
        log.info("expired %d idle conversations", expired)
    return expired
