"""Idempotent, batched upserts of analytics facts (SQLite and PostgreSQL).

Why upserts and not inserts: delivery is at-least-once, and analysts replay topics, so every
record may be seen more than once and a request and its result arrive in either order. Each
statement is written so that applying the same records again, in any order, leaves the same row:

- a **request** inserts its question as ``pending``; on conflict it sets who/what/when and never
  touches the outcome (a result that came first keeps its outcome). ``asked_at`` (and ``day``)
  keep the earliest value seen, or take the request's when the row was only a result's
  placeholder, so a re-run of the conversation stage (new ``created_at``) cannot move a question
  to another day;
- a **result** inserts a placeholder row when its request is not there yet (question ``""``,
  ``asked_at`` estimated as finished minus latency) and on conflict sets only the outcome fields;
- a **feedback** record is one tap or reaction, keyed by its wamid; a duplicate changes nothing
  (only a missing ``request_id`` is filled in).

Facts of a **forgotten** user (``wa_forgotten_user``, written by ``store.privacy``'s forget path)
whose event time is at or before the forget are dropped from the batch before it is written: a
replay of topics that still hold the user's events cannot re-create what the forget deleted,
while their later events (they came back) count as usual. Event time: ``asked_at`` of a request,
``at`` of a feedback, and for a result the time its backend started (``finished_at`` minus the
latency). A later result of a forgotten user only *updates* a question row that a request after
the forget created; it never inserts a placeholder, because a result does not say when its
question was asked (the answer of a question in flight at the forget, or of an old request the
answer stage re-ran, finishes after the forget).

One batch is one transaction, so a crash leaves either the whole batch or none of it; the agent
commits the topic offsets after the transaction, and a batch redelivered after a crash is
re-applied harmlessly. Within a batch, records are folded per key first (PostgreSQL refuses an
``ON CONFLICT DO UPDATE`` that touches one row twice in a statement).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, case, func, or_

from analytics.facts import NO_REQUEST_YET, FeedbackRow, RequestFact, ResultFact
from store.models import FeedbackFact, QuestionFact
from store.privacy import forgotten_since, lock_tenant_forgets

QUESTIONS = QuestionFact.__table__
FEEDBACK = FeedbackFact.__table__


def _insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


@dataclass
class FactBatch:
    """Facts of one batch of records, folded per key (same result as applying them in turn)."""

    requests: dict[str, RequestFact] = field(default_factory=dict)
    results: dict[str, ResultFact] = field(default_factory=dict)
    feedback: dict[str, FeedbackRow] = field(default_factory=dict)
    # results of forgotten users after their forget: applied to an existing row, never inserted
    result_updates: dict[str, ResultFact] = field(default_factory=dict)

    def __len__(self) -> int:
        n = len(self.requests) + len(self.results) + len(self.feedback)
        return n + len(self.result_updates)

    def add(self, fact: RequestFact | ResultFact | FeedbackRow) -> None:
        if isinstance(fact, RequestFact):
            seen = self.requests.get(fact.request_id)
            if seen is None or fact.asked_at < seen.asked_at:  # earliest wins, as in SQL
                self.requests[fact.request_id] = fact
        elif isinstance(fact, ResultFact):
            self.results[fact.request_id] = fact  # the latest result wins, as in SQL
        else:
            seen_fb = self.feedback.get(fact.feedback_id)
            if seen_fb is None or (seen_fb.request_id is None and fact.request_id):
                self.feedback[fact.feedback_id] = fact

    def extend(self, facts: Iterable[RequestFact | ResultFact | FeedbackRow]) -> None:
        for fact in facts:
            self.add(fact)

    def users(self) -> dict[str, set[str]]:
        """``{tenant_id: user hashes}`` of the batch (group results carry no user)."""
        found: dict[str, set[str]] = {}
        for fact in (*self.requests.values(), *self.results.values(), *self.feedback.values()):
            if fact.user_hash:
                found.setdefault(fact.tenant_id, set()).add(fact.user_hash)
        return found

    def without_forgotten(self, forgotten: dict[tuple[str, str], int]) -> FactBatch:
        """The facts not covered by a forget: ``{(tenant, user_hash): forgotten_at}``."""

        def since(fact: RequestFact | ResultFact | FeedbackRow) -> int | None:
            return forgotten.get((fact.tenant_id, fact.user_hash))

        def kept(fact: RequestFact | ResultFact | FeedbackRow, at: int) -> bool:
            forgot = since(fact)
            return forgot is None or at > forgot

        later = {k: f for k, f in self.results.items() if kept(f, f.estimated_asked_at)}
        return FactBatch(
            requests={k: f for k, f in self.requests.items() if kept(f, f.asked_at)},
            results={k: f for k, f in later.items() if since(f) is None},
            feedback={k: f for k, f in self.feedback.items() if kept(f, f.at)},
            result_updates={
                **self.result_updates,
                **{k: f for k, f in later.items() if since(f) is not None},
            },
        )


def upsert_requests(dialect: str) -> Any:
    stmt = _insert(dialect)(QUESTIONS)
    new, old = stmt.excluded, QUESTIONS.c
    take_new_time = or_(old.question == NO_REQUEST_YET, new.asked_at < old.asked_at)
    return stmt.on_conflict_do_update(
        index_elements=[old.request_id],
        set_={
            "tenant_id": new.tenant_id,
            "phone_number_id": new.phone_number_id,
            "user_hash": new.user_hash,
            "question": new.question,
            "asked_at": case((take_new_time, new.asked_at), else_=old.asked_at),
            "day": case((take_new_time, new.day), else_=old.day),
        },
    )


def upsert_results(dialect: str) -> Any:
    stmt = _insert(dialect)(QUESTIONS)
    new, old = stmt.excluded, QUESTIONS.c
    return stmt.on_conflict_do_update(
        index_elements=[old.request_id],
        set_={
            "outcome": new.outcome,
            "answered_at": new.answered_at,
            "latency_ms": new.latency_ms,
            "error_code": new.error_code,
            "citations": new.citations,
            # a placeholder of a group chat has no user yet; a request fills it, never a result
            "user_hash": case((old.user_hash == "", new.user_hash), else_=old.user_hash),
        },
    )


def update_results() -> Any:
    """A result applied to an existing question row only (a forgotten user's later answers)."""
    c = QUESTIONS.c
    return (
        QUESTIONS.update()
        .where(c.request_id == bindparam("b_request_id"))
        .values(
            outcome=bindparam("b_outcome"),
            answered_at=bindparam("b_answered_at"),
            latency_ms=bindparam("b_latency_ms"),
            error_code=bindparam("b_error_code"),
            citations=bindparam("b_citations"),
        )
    )


def upsert_feedback(dialect: str) -> Any:
    stmt = _insert(dialect)(FEEDBACK)
    new, old = stmt.excluded, FEEDBACK.c
    return stmt.on_conflict_do_update(
        index_elements=[old.feedback_id],
        set_={"request_id": func.coalesce(old.request_id, new.request_id)},
        where=and_(old.request_id.is_(None), new.request_id.is_not(None)),
    )


async def write_batch(sessions: Any, batch: FactBatch) -> int:
    """Apply ``batch`` in one transaction; returns the number of folded facts written (those of
    forgotten users' earlier events are not: ``len(batch)`` minus the result were skipped)."""
    if not len(batch):
        return 0
    async with sessions() as session, session.begin():
        dialect = session.bind.dialect.name
        users = batch.users()
        await lock_tenant_forgets(session, users, shared=True)
        forgotten = {
            (tenant, user): at
            for tenant, hashes in users.items()
            for user, at in (await forgotten_since(session, tenant, hashes)).items()
        }
        if forgotten:
            batch = batch.without_forgotten(forgotten)
        if batch.requests:
            await session.execute(
                upsert_requests(dialect), [f.row() for f in batch.requests.values()]
            )
        if batch.results:
            await session.execute(
                upsert_results(dialect), [f.row() for f in batch.results.values()]
            )
        if batch.feedback:
            await session.execute(
                upsert_feedback(dialect), [f.row() for f in batch.feedback.values()]
            )
        if batch.result_updates:
            await session.execute(
                update_results(),
                [
                    {
                        "b_request_id": f.request_id,
                        "b_outcome": f.outcome,
                        "b_answered_at": f.answered_at,
                        "b_latency_ms": f.latency_ms,
                        "b_error_code": f.error_code,
                        "b_citations": f.citations,
                    }
                    for f in batch.result_updates.values()
                ],
            )
    return len(batch)
