"""``streams.table_writes.TableWriter``: what RocksDB learns when a state record is delivered,
and that a failed or dropped record is reported, not raised inside the producer's callback."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from aiokafka.errors import KafkaTimeoutError
from faust.types import TP

from streams.table_writes import TableWriter


class FakeRocksStore(dict):
    def __init__(self) -> None:
        super().__init__()
        self.persisted: dict[TP, int] = {}

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset


def _writer() -> tuple[TableWriter, FakeRocksStore]:
    store = FakeRocksStore()
    table = SimpleNamespace(data=store, changelog_topic=SimpleNamespace())
    return TableWriter(app=None, table=table, track_offsets=True), store


async def test_a_delivered_record_advances_the_persisted_offset() -> None:
    writer, store = _writer()
    delivery = asyncio.get_running_loop().create_future()
    delivery.set_result(SimpleNamespace(topic="changelog", partition=3, offset=41))
    writer._persisted(delivery)
    assert store.persisted == {TP("changelog", 3): 41}


async def test_a_failed_or_cancelled_record_leaves_the_offset_quietly(caplog) -> None:
    """The delivery guard logs and counts a failed record (once); the writer neither logs it a
    second time nor raises inside the producer's callback (a cancelled future did, before)."""
    writer, store = _writer()
    loop = asyncio.get_running_loop()
    failed, cancelled = loop.create_future(), loop.create_future()
    failed.set_exception(KafkaTimeoutError())
    cancelled.cancel()
    with caplog.at_level(logging.DEBUG, logger="streams.table_writes"):
        writer._persisted(failed)
        writer._persisted(cancelled)
    assert store.persisted == {}
    assert [r for r in caplog.records if r.name == "streams.table_writes"] == []
