"""What every answer backend returns, and its mapping onto the AnswerResult record.

Both backends (Onyx and the local one) return these frozen values, so the answer stage and the
egress formatter never know which one answered. The text follows Onyx's citation convention
``[[n]](link)`` (n = ``Source.number``), which the formatter turns into ``[n]`` plus a footer.

Errors are values, not exceptions: ``Answer.error`` is ``"<code>: <detail>"`` (code as in the
AnswerResult ``error_code`` doc: timeout, rate_limited, upstream_5xx, circuit_open,
backend_error...), so a failed answer flows through Kafka like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Source:
    """One document an answer refers to; ``number`` is the ``n`` of ``[[n]](link)``."""

    number: int
    document_id: str
    title: str
    link: str | None = None
    source_type: str = "file"
    updated_at: datetime | None = None
    blurb: str = ""


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation, for follow-up questions."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class Answer:
    """A backend's answer (or failure). ``sources`` are the cited ones, numbered as in ``text``."""

    text: str
    sources: list[Source] = field(default_factory=list)
    top_documents: list[Source] = field(default_factory=list)
    onyx_message_id: int | None = None
    chat_session_id: str | None = None
    latency_ms: int = 0
    error: str | None = None
    error_retryable: bool = False

    @property
    def error_code(self) -> str | None:
        """The machine-readable part of ``error`` (before the first colon)."""
        if not self.error:
            return None
        return self.error.split(":", 1)[0].strip() or "backend_error"


class AnswerBackend(Protocol):
    """Anything that can answer a question with citations (Onyx, the local index...)."""

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


def _iso(moment: datetime | None) -> str | None:
    """ISO 8601 with an offset; a naive datetime is taken as UTC so consumers never guess."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def source_to_avro(source: Source) -> dict[str, Any]:
    """The ``onyx_wa.events.Source`` record for ``source``."""
    return {
        "number": int(source.number),
        "document_id": source.document_id,
        "title": source.title,
        "link": source.link or None,
        "source_type": source.source_type or None,
        "updated_at": _iso(source.updated_at),
        "blurb": source.blurb or None,
    }


def answer_to_avro_fields(answer: Answer) -> dict[str, Any]:
    """The AnswerResult fields that come from the backend's answer.

    The caller adds the request's routing fields (tenant, chat, recipient...) and ``finished_at``.
    """
    return {
        "status": "failed" if answer.error else "ok",
        "answer": "" if answer.error else answer.text,
        "citations": [source_to_avro(s) for s in answer.sources],
        "top_documents": [source_to_avro(s) for s in answer.top_documents],
        "onyx_message_id": answer.onyx_message_id,
        "onyx_chat_session_id": answer.chat_session_id,
        "latency_ms": max(0, int(answer.latency_ms)),
        "error_code": answer.error_code,
        "error_message": answer.error,
    }
