"""What every answer backend returns, and its mapping onto the AnswerResult record.

The text follows Onyx's citation convention ``[[n]](link)`` (n = Source.number), so the egress
formatter handles Onyx and the local backend the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Source:
    number: int
    document_id: str
    title: str
    link: str | None = None
    source_type: str = "file"
    updated_at: datetime | None = None
    blurb: str = ""


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class Answer:
    text: str
    sources: list[Source] = field(default_factory=list)
    top_documents: list[Source] = field(default_factory=list)
    onyx_message_id: int | None = None
    chat_session_id: str | None = None
    latency_ms: int = 0
    error: str | None = None
    error_retryable: bool = False


class AnswerBackend(Protocol):
    async def answer(
        self,
        question: str,
        *,
        history: Sequence[Turn],
        session_id: str | None,
        persona_id: int | None,
        document_sets: Sequence[str],
        filters: Mapping[str, Any],
    ) -> Answer: ...

    async def aclose(self) -> None: ...


def source_to_avro(source: Source) -> dict[str, Any]:
    return {
        "number": source.number,
        "document_id": source.document_id,
        "title": source.title,
        "link": source.link,
        "source_type": source.source_type,
        "updated_at": source.updated_at.isoformat() if source.updated_at else None,
        "blurb": source.blurb or None,
    }


def answer_to_avro_fields(answer: Answer) -> dict[str, Any]:
    """The AnswerResult fields that come from the backend's answer."""
    return {
        "answer": answer.text,
        "citations": [source_to_avro(s) for s in answer.sources],
        "top_documents": [source_to_avro(s) for s in answer.top_documents],
        "onyx_message_id": answer.onyx_message_id,
        "onyx_chat_session_id": answer.chat_session_id,
        "latency_ms": answer.latency_ms,
    }
