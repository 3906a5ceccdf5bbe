"""The Faust app factory: one app per worker process, stages registered by role.

Why a factory and not a module-level app: tests and ``onyx-wa up`` build apps with different
topic prefixes, partitions and roles in one interpreter, and settings are validated before any
Faust object exists. Each stage module exposes ``register(app, ctx)``.

Roles: ``streams`` (preprocess, conversation), ``answers`` (answer stage), ``egress`` (compose and
send), ``analytics`` (usage and feedback facts into the database, see ``analytics.agent``). A
worker runs any subset; the consumer group id is derived from the roles so that workers running
the same roles share the work, and workers running other roles never steal it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.serializers import codecs

from onyx_wa import topics as t
from onyx_wa.kafka import CachedPartitioner, faust_broker_settings
from onyx_wa.settings import Settings
from schemas.codec import get_codec
from schemas.faust_codec import register_faust_codecs
from streams import delivery_guard, eager_delivery, offset_guard

log = logging.getLogger(__name__)

ROLES = ("streams", "answers", "egress", "analytics")


class AnyAvro(codecs.Codec):
    """Decode any project record by the schema id in its header (for multi-topic streams)."""

    def _dumps(self, obj: Any) -> bytes:  # pragma: no cover - never used to write
        raise TypeError("avro.any is read-only: send with the record's own codec")

    def _loads(self, s: bytes) -> Any:
        return get_codec().decode(s)


def _register_codecs() -> None:
    register_faust_codecs()
    if "avro.any" not in codecs.codecs:
        codecs.register("avro.any", AnyAvro())


@dataclass
class Topics:
    """Faust topic objects of the pipeline, under the settings' prefix."""

    app: faust.App
    settings: Settings
    _cache: dict[str, faust.TopicT] = field(default_factory=dict)

    def name(self, spec: t.TopicSpec) -> str:
        return t.full_name(spec, self.settings.topic_prefix)

    def of(self, spec: t.TopicSpec) -> faust.TopicT:
        """The topic for sending ``spec``'s records (and reading them typed)."""
        if spec.name not in self._cache:
            self._cache[spec.name] = self.app.topic(
                self.name(spec),
                key_serializer="raw",
                value_serializer=f"avro.{spec.schema}",
                partitions=self.settings.partitions,
                internal=False,
            )
        return self._cache[spec.name]

    async def send(
        self,
        spec: t.TopicSpec,
        key: bytes,
        value: dict[str, Any],
        *,
        tail: bytes | None = None,
    ) -> None:
        """Encode ``value`` as ``spec``'s record and hand it to the app's producer.

        ``tail``: the framed bytes the record's last field (a nested record) was decoded from;
        their body is reused instead of encoded again (``AvroCodec.encode_spliced``).

        Why not ``self.of(spec).send()``: on the hot path Faust's channel, schema and registry
        layers cost about as much as the encoding itself (profiled in ``bench/streams.py``).
        This keeps the same guarantee: Faust flushes ``app.producer`` before it commits
        offsets, so a record is on the broker before the input that produced it is committed,
        and a record that failed stops the commits (``streams.delivery_guard``, which also logs
        it). The partition is left to the producer's partitioner (murmur2 of the key, the
        hashes of recent keys cached: ``onyx_wa.kafka.CachedPartitioner``), like the topic
        objects do.
        """
        codec = get_codec()
        if tail is None:
            data = codec.encode(spec.schema, value)
        else:
            data = codec.encode_spliced(spec.schema, value, tail)
        await self.app.producer.send(self.name(spec), key, data, None, None, None)

    def merged(self, *specs: t.TopicSpec) -> faust.TopicT:
        """One stream over several co-partitioned topics (same key, same partition count)."""
        return self.app.topic(
            *(self.name(s) for s in specs),
            key_serializer="raw",
            value_serializer="raw",  # the agent decodes (by schema id) so bad bytes are caught
            partitions=self.settings.partitions,
        )


@dataclass
class StageContext:
    """What stages share in one worker: settings, topics and lazily opened resources."""

    settings: Settings
    topics: Topics
    resources: dict[str, Any] = field(default_factory=dict)


def app_id(settings: Settings, roles: Iterable[str]) -> str:
    base = f"{settings.topic_prefix}.onyx-wa" if settings.topic_prefix else "onyx-wa"
    return f"{base}-{'-'.join(sorted(set(roles)))}"


def build_app(
    settings: Settings, roles: Iterable[str] = ROLES, **resources: Any
) -> tuple[faust.App, StageContext]:
    """Create the Faust app for ``roles`` and register their stages."""
    roles = tuple(sorted(set(roles)))
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown worker role(s) {sorted(unknown)}; choose from {list(ROLES)}")
    _register_codecs()
    if settings.tansu:
        from onyx_wa.kafka import patch_faust_for_tansu

        patch_faust_for_tansu()
    store = "memory://" if settings.store == "memory" else "rocksdb://"
    datadir = settings.data_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)  # RocksDB does not create missing parents
    app = faust.App(
        app_id(settings, roles),
        **faust_broker_settings(settings),
        producer_partitioner=CachedPartitioner(),
        store=store,
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        table_standby_replicas=0,
    )
    offset_guard.install(app)
    eager_delivery.install(app)
    delivery_guard.install(app)
    ctx = StageContext(settings=settings, topics=Topics(app, settings), resources=dict(resources))
    if "streams" in roles:
        from streams import conversation, preprocess

        preprocess.register(app, ctx)
        conversation.register(app, ctx)
    if "answers" in roles:
        from answers import stage as answer_stage

        answer_stage.register(app, ctx)
    if "egress" in roles:
        from egress import stage as egress_stage

        egress_stage.register(app, ctx)
    if "analytics" in roles:
        from analytics import agent as analytics_agent

        analytics_agent.register(app, ctx)
    delivery_guard.guard_agents(app)
    return app, ctx


# RocksDB per partition database (each table has one per partition it holds). Faust's defaults
# are sized for one big table on a big machine: 64 MiB write buffers (×3) and a 2 GiB block
# cache per database. With 8 partitions × 2 tables, conversation state of ~1 KB per chat sat in
# memtables and 100,000 conversations took the worker to 206 MB. Small buffers flush it to disk,
# which is the point of choosing RocksDB over the memory store. 4 MiB buffers measured 184–192 MB
# at 100,000 conversations (too close to the 200 MB goal); 2 MiB measured 178 MB, with the same
# fill rate (~1,400 events/s).
ROCKSDB_TABLE_OPTIONS: dict[str, int] = {
    "write_buffer_size": 2 * 1024**2,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024**2,
    "block_cache_size": 8 * 1024**2,
    "block_cache_compressed_size": 0,
}


def table_options(settings: Settings) -> dict[str, Any] | None:
    """Store options for ``app.Table(options=...)``: RocksDB sizing, None for the memory store."""
    return dict(ROCKSDB_TABLE_OPTIONS) if settings.store == "rocksdb" else None
