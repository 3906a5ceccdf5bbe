"""Pure mapping of pipeline records onto analytics fact rows (no I/O, no clock).

Three inputs, two tables:

- an ``AnswerRequest`` says a question was asked: who (pseudonymized), when, what;
- an ``AnswerResult`` says how it ended: ok / failed / unanswered, latency, error, citations;
- a ``Feedback`` record is one 👍/👎 tap or reaction.

A request and its result update the same ``wa_question_fact`` row (key ``request_id``, which is
deterministic from tenant and question wamid, so replays collide). Either can come first: the
agent reads three topics and Kafka orders records only within one partition of one topic.

Users are never stored as phone numbers or BSUIDs: :class:`UserHasher` is the project's keyed
pseudonym (``store.privacy.user_hash``, HMAC-SHA256 of tenant and sender with a secret that is
not in the database), so a leaked database cannot be reversed by hashing every phone number.

**Unanswered** (the rule, also in docs/analytics.md): the backend answered (``status = ok``) but
the answer is not backed by any document, i.e. it has no citations, or its text is empty. The
local backend answers "I couldn't find that…" with no citations and no documents; Onyx answers
without citations when retrieval found nothing relevant. An uncited answer may still be a polite
reply to small talk that the classifier let through; it is counted as unanswered because the
user did not get an answer from the knowledge base, which is what the figure is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

QUESTION_MAX_CHARS = 1000  # wa_question_fact.question
ERROR_CODE_MAX_CHARS = 64
OUTCOMES = ("pending", "ok", "failed", "unanswered")
NO_REQUEST_YET = ""  # the question of a row created by its result (the request not seen yet)


def epoch_ms(value: Any) -> int:
    """Avro timestamp-millis as decoded (a datetime) or as built (an int) → epoch ms."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    return int(value or 0)


def day_of(ms: int) -> str:
    """The UTC calendar day (``YYYY-MM-DD``) of an epoch-ms instant."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


class UserHasher:
    """Keyed pseudonyms of users, exactly :func:`store.privacy.user_hash` (64 hex characters).

    The secret is resolved once (``store.privacy.secrets_for``: ``ONYX_WA_HASH_SECRET`` or one
    derived from the oldest encryption key), not per event. Same function as the forget path
    and the logs, so ``/forget`` finds the facts and a log line's hash matches a fact row.
    """

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the user hash secret must not be empty")
        self._secret = secret

    @classmethod
    def from_settings(cls, settings: Any) -> UserHasher:
        from store.privacy import secrets_for

        return cls(secrets_for(settings)[0])

    def __call__(self, tenant_id: str, user_id: str) -> str:
        from store.privacy import _digest

        return _digest(self._secret, tenant_id, user_id)

    def __repr__(self) -> str:  # never show the secret
        return "UserHasher(<secret>)"


def _clip(text: str | None, limit: int) -> str:
    text = " ".join((text or "").split())  # one line, no runs of whitespace
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_unanswered(result: Mapping[str, Any]) -> bool:
    """The unanswered rule (see the module doc): ok, but no citations or an empty answer."""
    if result.get("status") != "ok":
        return False
    return not (result.get("citations") or []) or not (result.get("answer") or "").strip()


def outcome_of(result: Mapping[str, Any]) -> str:
    if result.get("status") != "ok":
        return "failed"
    return "unanswered" if is_unanswered(result) else "ok"


@dataclass(frozen=True)
class RequestFact:
    """What an AnswerRequest contributes to its question row."""

    request_id: str
    tenant_id: str
    phone_number_id: str
    user_hash: str
    day: str
    asked_at: int
    question: str

    def row(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "tenant_id": self.tenant_id,
            "phone_number_id": self.phone_number_id,
            "user_hash": self.user_hash,
            "day": self.day,
            "asked_at": self.asked_at,
            "question": self.question,
            "outcome": "pending",
            "answered_at": None,
            "latency_ms": None,
            "error_code": None,
            "citations": 0,
        }


@dataclass(frozen=True)
class ResultFact:
    """What an AnswerResult contributes; ``row()`` is the placeholder when it comes first."""

    request_id: str
    tenant_id: str
    phone_number_id: str
    user_hash: str  # from the chat id of a 1:1 chat (= the sender); "" for groups
    outcome: str
    answered_at: int
    latency_ms: int
    error_code: str | None
    citations: int

    @property
    def estimated_asked_at(self) -> int:
        """Until the request is seen: when the backend started (finished minus its latency)."""
        return max(0, self.answered_at - max(0, self.latency_ms))

    def row(self) -> dict[str, Any]:
        asked = self.estimated_asked_at
        return {
            "request_id": self.request_id,
            "tenant_id": self.tenant_id,
            "phone_number_id": self.phone_number_id,
            "user_hash": self.user_hash,
            "day": day_of(asked),
            "asked_at": asked,
            "question": NO_REQUEST_YET,
            "outcome": self.outcome,
            "answered_at": self.answered_at,
            "latency_ms": self.latency_ms,
            "error_code": self.error_code,
            "citations": self.citations,
        }


@dataclass(frozen=True)
class FeedbackRow:
    feedback_id: str
    tenant_id: str
    request_id: str | None
    user_hash: str
    day: str
    at: int
    is_positive: bool
    source: str

    def row(self) -> dict[str, Any]:
        return {
            "feedback_id": self.feedback_id,
            "tenant_id": self.tenant_id,
            "request_id": self.request_id,
            "user_hash": self.user_hash,
            "day": self.day,
            "at": self.at,
            "is_positive": self.is_positive,
            "source": self.source,
        }


def request_fact(record: Mapping[str, Any], hasher: UserHasher) -> RequestFact:
    asked = epoch_ms(record["created_at"])
    return RequestFact(
        request_id=str(record["request_id"])[:64],
        tenant_id=str(record["tenant_id"]),
        phone_number_id=str(record["phone_number_id"])[:32],
        user_hash=hasher(record["tenant_id"], record["sender_id"]),
        day=day_of(asked),
        asked_at=asked,
        question=_clip(record.get("question"), QUESTION_MAX_CHARS) or "(empty)",
    )


def result_fact(record: Mapping[str, Any], hasher: UserHasher) -> ResultFact:
    direct = str(record.get("chat_type") or "direct") == "direct"
    error = record.get("error_code")
    return ResultFact(
        request_id=str(record["request_id"])[:64],
        tenant_id=str(record["tenant_id"]),
        phone_number_id=str(record["phone_number_id"])[:32],
        user_hash=hasher(record["tenant_id"], record["chat_id"]) if direct else "",
        outcome=outcome_of(record),
        answered_at=epoch_ms(record["finished_at"]),
        latency_ms=max(0, min(int(record.get("latency_ms") or 0), 2**31 - 1)),
        error_code=(str(error)[:ERROR_CODE_MAX_CHARS] if error else None)
        if record.get("status") != "ok"
        else None,
        citations=len(record.get("citations") or []),
    )


def feedback_fact(record: Mapping[str, Any], hasher: UserHasher) -> FeedbackRow:
    at = epoch_ms(record["at"])
    request_id = record.get("request_id")
    return FeedbackRow(
        feedback_id=str(record["feedback_id"])[:128],
        tenant_id=str(record["tenant_id"]),
        request_id=str(request_id)[:64] if request_id else None,
        user_hash=hasher(record["tenant_id"], record["sender_id"]),
        day=day_of(at),
        at=at,
        is_positive=bool(record["is_positive"]),
        source=str(record.get("source") or "button")[:16],
    )


def kind_of(record: Mapping[str, Any]) -> str | None:
    """Which record a decoded value is, by its fields (for callers without the topic name)."""
    if "feedback_id" in record:
        return "feedback"
    if "status" in record and "finished_at" in record:
        return "result"
    if "question" in record and "created_at" in record:
        return "request"
    return None
