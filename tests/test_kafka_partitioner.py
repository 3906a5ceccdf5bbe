"""The cached partitioner picks exactly the partitions of Kafka's default partitioner."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from onyx_wa.kafka import CachedPartitioner
from onyx_wa.settings import load_settings
from streams.app import build_app

PARTITIONS = [list(range(n)) for n in (1, 3, 8, 12)]


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.binary(max_size=64), min_size=1, max_size=40))
def test_same_partitions_as_the_default_partitioner_asked_twice(keys):
    cached, default = CachedPartitioner(size=16), DefaultPartitioner()
    for partitions in PARTITIONS:
        for key in keys + keys:  # the second pass is answered from the cache (or a refill)
            assert cached(key, partitions, partitions) == default(key, partitions, partitions)


def test_the_cache_is_bounded_and_a_key_without_one_is_spread_over_available():
    cached = CachedPartitioner(size=4)
    for i in range(10):
        cached(f"acme:{i}".encode(), [0, 1, 2], [0, 1, 2])
        assert len(cached._hashes) <= 4
    assert {cached(None, [0, 1, 2], [2]) for _ in range(20)} == {2}


def test_pipeline_apps_partition_with_it(tmp_path):
    app, _ = build_app(load_settings(data_dir=tmp_path), roles=("streams",))
    assert isinstance(app.conf.producer_partitioner, CachedPartitioner)
