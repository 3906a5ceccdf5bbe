"""The analytics figures of one tenant over a range of UTC days (the dashboard and the API).

Definitions (also in docs/analytics.md):

- **questions**: question facts asked on the day (``day`` = UTC date of ``asked_at``), in any
  outcome; ``answered`` (outcome ok), ``unanswered``, ``failed`` and ``pending`` (no result yet)
  add up to it.
- **latency**: the backend's answer latency (``AnswerResult.latency_ms``) of questions it
  answered (ok or unanswered), median and 95th percentile, linearly interpolated like
  PostgreSQL's ``percentile_cont`` (computed there; in Python on SQLite, which has none).
  Failures are excluded: a timeout's latency is the timeout, not an answer time.
- **feedback ratio**: up / (up + down) over feedback given on the days of the range; a user's
  latest vote per answer counts once (changing 👍 to 👎 is one 👎). ``None`` without feedback.
- **active users**: distinct pseudonymous users who asked a question that day; over the range,
  distinct users over the whole range (not the sum of the days).
- **top unanswered**: unanswered questions grouped case- and space-insensitively, most asked
  first (ties: most recently asked first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Integer, and_, case, func, literal_column, select

from analytics.facts import NO_REQUEST_YET
from store.models import FeedbackFact, QuestionFact

MAX_DAYS = 366
TOP_UNANSWERED = 10
ANSWERED_OUTCOMES = ("ok", "unanswered")


@dataclass
class Latency:
    median_ms: float | None = None
    p95_ms: float | None = None


@dataclass
class DayFigures:
    day: str
    questions: int = 0
    answered: int = 0
    unanswered: int = 0
    failed: int = 0
    pending: int = 0
    active_users: int = 0
    latency: Latency = field(default_factory=Latency)
    feedback_up: int = 0
    feedback_down: int = 0


@dataclass
class TopQuestion:
    question: str
    count: int
    last_asked_at: int  # epoch ms


@dataclass
class TenantAnalytics:
    tenant_id: str
    first_day: str
    last_day: str
    questions: int = 0
    answered: int = 0
    unanswered: int = 0
    failed: int = 0
    pending: int = 0
    active_users: int = 0
    latency: Latency = field(default_factory=Latency)
    feedback_up: int = 0
    feedback_down: int = 0
    days: list[DayFigures] = field(default_factory=list)
    top_unanswered: list[TopQuestion] = field(default_factory=list)

    @property
    def feedback_ratio(self) -> float | None:
        votes = self.feedback_up + self.feedback_down
        return round(self.feedback_up / votes, 4) if votes else None


def percentile(sorted_values: list[int] | list[float], fraction: float) -> float | None:
    """``percentile_cont``: linear interpolation between the closest ranks; None when empty."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    value = sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
    return round(float(value), 1)


def day_range(first: date, last: date) -> list[str]:
    if last < first:
        raise ValueError("the range ends before it starts")
    if (last - first).days + 1 > MAX_DAYS:
        raise ValueError(f"the range is longer than {MAX_DAYS} days")
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def _in_range(table: Any, tenant_id: str, first: str, last: str) -> Any:
    return and_(table.c.tenant_id == tenant_id, table.c.day >= first, table.c.day <= last)


def _count(outcome: str) -> Any:
    return func.sum(case((QuestionFact.__table__.c.outcome == outcome, 1), else_=0)).cast(Integer)


async def tenant_analytics(
    sessions: Any, tenant_id: str, first: date, last: date, *, top: int = TOP_UNANSWERED
) -> TenantAnalytics:
    """Every figure of the dashboard for ``tenant_id`` from ``first`` to ``last`` (inclusive)."""
    days = day_range(first, last)
    lo, hi = days[0], days[-1]
    q = QuestionFact.__table__
    f = FeedbackFact.__table__
    out = TenantAnalytics(tenant_id=tenant_id, first_day=lo, last_day=hi)
    per_day = {d: DayFigures(day=d) for d in days}
    where_q = _in_range(q, tenant_id, lo, hi)
    user_known = q.c.user_hash != ""
    async with sessions() as session:
        dialect = session.bind.dialect.name
        rows = await session.execute(
            select(
                q.c.day,
                func.count(),
                _count("ok"),
                _count("unanswered"),
                _count("failed"),
                _count("pending"),
                func.count(func.distinct(case((user_known, q.c.user_hash), else_=None))),
            )
            .where(where_q)
            .group_by(q.c.day)
        )
        for day, total, ok, unanswered, failed, pending, users in rows:
            fig = per_day[day]
            fig.questions, fig.answered, fig.unanswered = total, ok or 0, unanswered or 0
            fig.failed, fig.pending, fig.active_users = failed or 0, pending or 0, users
        out.active_users = int(
            await session.scalar(
                select(func.count(func.distinct(q.c.user_hash))).where(where_q, user_known)
            )
            or 0
        )
        answered_where = and_(
            where_q, q.c.outcome.in_(ANSWERED_OUTCOMES), q.c.latency_ms.is_not(None)
        )
        if dialect == "postgresql":
            await _latency_postgres(session, answered_where, per_day, out)
        else:
            await _latency_python(session, answered_where, per_day, out)
        await _feedback(session, f, _in_range(f, tenant_id, lo, hi), per_day, out)
        out.top_unanswered = await _top_unanswered(session, where_q, top)
    for fig in per_day.values():
        out.questions += fig.questions
        out.answered += fig.answered
        out.unanswered += fig.unanswered
        out.failed += fig.failed
        out.pending += fig.pending
    out.days = list(per_day.values())
    return out


async def _latency_postgres(
    session: Any, where: Any, per_day: dict[str, DayFigures], out: TenantAnalytics
) -> None:
    q = QuestionFact.__table__

    def cont(fraction: float) -> Any:
        return func.percentile_cont(fraction).within_group(q.c.latency_ms)

    for day, median, p95 in await session.execute(
        select(q.c.day, cont(0.5), cont(0.95)).where(where).group_by(q.c.day)
    ):
        per_day[day].latency = Latency(_round(median), _round(p95))
    row = (await session.execute(select(cont(0.5), cont(0.95)).where(where))).one()
    out.latency = Latency(_round(row[0]), _round(row[1]))


async def _latency_python(
    session: Any, where: Any, per_day: dict[str, DayFigures], out: TenantAnalytics
) -> None:
    """SQLite has no percentile function: read the range's latencies (one column, ordered)."""
    q = QuestionFact.__table__
    everything: list[int] = []
    by_day: dict[str, list[int]] = {}
    result = await session.stream(
        select(q.c.day, q.c.latency_ms).where(where).order_by(q.c.latency_ms)
    )
    async for day, latency in result:
        everything.append(latency)
        by_day.setdefault(day, []).append(latency)
    for day, values in by_day.items():
        per_day[day].latency = Latency(percentile(values, 0.5), percentile(values, 0.95))
    out.latency = Latency(percentile(everything, 0.5), percentile(everything, 0.95))


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


async def _feedback(
    session: Any, f: Any, where: Any, per_day: dict[str, DayFigures], out: TenantAnalytics
) -> None:
    """Latest vote per (answer, user); feedback not tied to an answer counts per tap."""
    ranked = (
        select(
            f.c.day,
            f.c.is_positive,
            func.row_number()
            .over(
                partition_by=(
                    case((f.c.request_id.is_(None), f.c.feedback_id), else_=f.c.request_id),
                    f.c.user_hash,
                ),
                order_by=(f.c.at.desc(), f.c.feedback_id.desc()),
            )
            .label("rank"),
        )
        .where(where)
        .subquery()
    )
    rows = await session.execute(
        select(ranked.c.day, ranked.c.is_positive, func.count())
        .where(ranked.c.rank == 1)
        .group_by(ranked.c.day, ranked.c.is_positive)
    )
    for day, positive, count in rows:
        fig = per_day[day]
        if positive:
            fig.feedback_up += count
            out.feedback_up += count
        else:
            fig.feedback_down += count
            out.feedback_down += count


async def _top_unanswered(session: Any, where: Any, top: int) -> list[TopQuestion]:
    q = QuestionFact.__table__
    norm = func.lower(func.trim(q.c.question))
    rows = await session.execute(
        select(
            func.min(q.c.question),
            func.count().label("n"),
            func.max(q.c.asked_at).label("last"),
        )
        .where(where, q.c.outcome == "unanswered", q.c.question != NO_REQUEST_YET)
        .group_by(norm)
        .order_by(literal_column("n").desc(), literal_column("last").desc(), norm)
        .limit(top)
    )
    return [TopQuestion(question=text, count=n, last_asked_at=int(last)) for text, n, last in rows]


async def tenant_has_data(sessions: Any, tenant_id: str) -> bool:
    """Whether any bot or fact belongs to ``tenant_id`` (an unknown tenant answers 404)."""
    from store.models import WhatsAppBot

    async with sessions() as session:
        for model in (WhatsAppBot, QuestionFact, FeedbackFact):
            found = await session.scalar(
                select(literal_column("1")).where(model.tenant_id == tenant_id).limit(1)
            )
            if found:
                return True
    return False
