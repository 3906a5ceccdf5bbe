"""The Avro codec as Faust codecs: ``value_serializer="avro.<RecordName>"`` on a topic.

Why one codec per record rather than one generic codec: the name on the topic declares its
contract. Sending encodes (and validates) with that record's newest schema; receiving decodes
with the writer's schema (found by the id in each record's header) and resolves it to the
topic's record, so an agent built against a newer version still gets every field it knows
(defaults fill what an older producer did not write) and never sees a stranger record type.

Keys are not Avro: topics use ``key_serializer="raw"`` and keys are UTF-8 strings such as
``tenant:chat``, so every client (Faust, aiokafka, kcat, Java) hashes the same bytes to the same
partition and ordering per conversation or sending number holds across languages.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from schemas.codec import get_codec

PREFIX = "avro."


class AvroRecordCodec(codecs.Codec):
    """Faust codec for one record type; agents see plain dicts."""

    def __init__(self, record_name: str, **kwargs: Any) -> None:
        self.record_name = record_name
        super().__init__(record_name=record_name, **kwargs)

    def _dumps(self, obj: Any) -> bytes:
        return get_codec().encode(self.record_name, obj)

    def _loads(self, s: bytes) -> Any:
        return get_codec().decode(s, reader=self.record_name)


def codec_name(record_name: str) -> str:
    """The Faust serializer name of a record, e.g. ``avro.InboundMessage``."""
    return f"{PREFIX}{record_name}"


def register_faust_codecs() -> list[str]:
    """Register ``avro.<RecordName>`` for every record (idempotent); returns the names."""
    names = []
    for record_name in get_codec().record_names():
        name = codec_name(record_name)
        existing = codecs.codecs.get(name)
        if not (isinstance(existing, AvroRecordCodec) and existing.record_name == record_name):
            codecs.register(name, AvroRecordCodec(record_name))
        names.append(name)
    return names
