"""Write a Faust table's key through the app's producer instead of the table's own API.

Why: ``table[key] = value`` sends the changelog record with Faust's ``send_soon`` (a
``FutureMessage``, the producer's buffer and its drain task), which profiling showed to be a
large share of the conversation stage's per-event cost. This writes the same bytes (Faust's own
serializers for the changelog topic) to the same partition through ``app.producer.send``, like
``Topics.send`` does for the stage's outputs. The guarantee is unchanged: Faust flushes
``app.producer`` before it commits offsets, so a state record is on the broker before the input
that produced it is committed. RocksDB keeps the changelog offset it holds, as Faust's
``_on_changelog_sent`` does, so recovery starts where the local database ends.
"""

from __future__ import annotations

from typing import Any

from faust.types import TP


class TableWriter:
    """``await writer.set(key, value, partition)`` ≡ ``table[key] = value`` inside an agent."""

    def __init__(self, app: Any, table: Any, *, track_offsets: bool) -> None:
        self.app = app
        self.table = table
        self.track_offsets = track_offsets  # only RocksDB persists the changelog offset
        self._topic = table.changelog_topic
        self._name: str | None = None

    async def set(self, key: Any, value: Any, partition: int) -> None:
        table = self.table
        table.data[key] = value  # the local store (RocksDB writes to the event's partition)
        if self._name is None:
            self._name = self._topic.get_topic_name()
        key_bytes, _ = self._topic.prepare_key(key, table.key_serializer)
        value_bytes, _ = self._topic.prepare_value(value, table.value_serializer)
        delivery = await self.app.producer.send(
            self._name, key_bytes, value_bytes, partition, None, None
        )
        if self.track_offsets:
            delivery.add_done_callback(self._persisted)

    def _persisted(self, delivery: Any) -> None:
        # a failed or dropped record is logged and counted by the delivery guard
        # (streams.delivery_guard), which also stops the commits: here it only must not move
        # the persisted offset, nor raise inside the producer's callback
        if delivery.cancelled() or delivery.exception() is not None:
            return
        metadata = delivery.result()
        tp = TP(metadata.topic, metadata.partition)
        self.table.data.set_persisted_offset(tp, metadata.offset)
