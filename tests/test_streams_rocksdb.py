"""The RocksDB store (``ONYX_WA_STORE=rocksdb``): a question answered end to end with both tables
on RocksDB, sized by ``streams.app.ROCKSDB_TABLE_OPTIONS`` rather than Faust's defaults (the
difference between 206 MB and the < 200 MB goal at 100,000 conversations, ``bench streams``)."""

from __future__ import annotations

import os

import pytest
from faust.types import TP

from streams.app import ROCKSDB_TABLE_OPTIONS
from tests.pipeline_harness import start_pipeline, stop_pipeline

pytestmark = pytest.mark.timeout(180)


async def test_a_rocksdb_worker_answers_and_keeps_state_on_disk(kafka_target, tmp_path):
    pytest.importorskip("rocksdict", reason="the rocksdb extra is not installed")
    pipeline = await start_pipeline(
        kafka_target.bootstrap_servers,
        tmp_path,
        os.environ.get("ONYX_WA_E2E_DATABASE_URL"),
        broker_flavor="tansu" if kafka_target.embedded else "kafka",
        store="rocksdb",
    )
    try:
        bot = await pipeline.add_bot()
        user = "15550000901"
        wamid = await pipeline.meta(bot).send_text(
            bot.phone_number_id, user, "How many vacation days do I get?"
        )
        replies = await pipeline.wait_for(user, 2)
        assert [r["context"] for r in replies if r["type"] == "text"] == [wamid], replies
        for name in ("conversations", "sent"):
            table = pipeline.worker.app.tables[name]
            options = table.data.rocksdb_options
            assert options.write_buffer_size == ROCKSDB_TABLE_OPTIONS["write_buffer_size"]
            assert options.block_cache_size == ROCKSDB_TABLE_OPTIONS["block_cache_size"]
        conversations = pipeline.worker.app.tables["conversations"]
        state = conversations.get(f"{bot.tenant_id}:{user}")
        assert state is not None and wamid in state["seen"]
        # the state is written through streams.table_writes: RocksDB must still learn the
        # changelog offset it holds (recovery after a restart starts from there)
        changelog = conversations.changelog_topic.get_topic_name()
        persisted = [
            conversations.data.persisted_offset(TP(changelog, p))
            for p in range(conversations.partitions)
        ]
        assert any(offset is not None and offset >= 0 for offset in persisted), persisted
        assert any((tmp_path / "faust").rglob("*.sst")) or any((tmp_path / "faust").rglob("LOG"))
    finally:
        await stop_pipeline(pipeline)
