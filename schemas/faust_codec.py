"""The Avro codec as Faust codecs: ``value_serializer="avro.<RecordName>"`` on a topic.

Agents then receive plain dicts decoded with the writer's schema (found by the id in each
record's header) and send dicts that are validated and encoded with the record's schema. Keys
stay raw UTF-8 bytes (``key_serializer="raw"``) so that every client partitions them the same way.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from schemas.codec import get_codec


class AvroRecordCodec(codecs.Codec):
    """Faust codec for one record type."""

    def __init__(self, record_name: str, **kwargs: Any) -> None:
        self.record_name = record_name
        super().__init__(record_name=record_name, **kwargs)

    def _dumps(self, obj: Any) -> bytes:
        return get_codec().encode(self.record_name, obj)

    def _loads(self, s: bytes) -> Any:
        return get_codec().decode(s)


def register_faust_codecs() -> list[str]:
    """Register ``avro.<RecordName>`` for every record (idempotent); returns the names."""
    names = []
    for record_name in get_codec().record_names():
        name = f"avro.{record_name}"
        if name not in codecs.codecs:
            codecs.register(name, AvroRecordCodec(record_name))
        names.append(name)
    return names
