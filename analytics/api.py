"""``GET /api/v1/tenants/{tenant_id}/analytics``: the dashboard's figures as JSON.

A route table for ``admin.app.create_app(extra_routes=...)``: bearer auth, the access log and
the OpenAPI document come from the admin app. Tenant admins see only their own tenant; any other
tenant answers 404 with the same message as a tenant that does not exist (no probing). An
operator asking for a tenant with no bots and no facts also gets 404 (a typo is not "all zero").
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from admin.api import API, Call, Param, Route
from admin.errors import bad_request, not_found
from analytics.queries import (
    MAX_DAYS,
    Latency,
    TenantAnalytics,
    tenant_analytics,
    tenant_has_data,
)

DEFAULT_DAYS = 30


class LatencyOut(BaseModel):
    median_ms: float | None = Field(description="Median backend answer latency (ok+unanswered).")
    p95_ms: float | None = Field(description="95th percentile, interpolated like percentile_cont.")


class CountsOut(BaseModel):
    questions: int = Field(description="Questions asked (every outcome).")
    answered: int = Field(description="Answered with at least one citation.")
    unanswered: int = Field(description="Answered, but with no citation (nothing found).")
    failed: int = Field(description="The backend failed (timeout, error, circuit open...).")
    pending: int = Field(description="No result yet.")
    active_users: int = Field(description="Distinct users who asked (over the period).")
    feedback_up: int
    feedback_down: int


class DayOut(CountsOut):
    day: str = Field(description="UTC day, YYYY-MM-DD.")
    latency: LatencyOut


class TotalsOut(CountsOut):
    latency: LatencyOut
    feedback_ratio: float | None = Field(description="up / (up + down); null without feedback.")


class TopQuestionOut(BaseModel):
    question: str
    count: int
    last_asked_at: datetime


class AnalyticsOut(BaseModel):
    tenant_id: str
    from_: str = Field(alias="from", serialization_alias="from", description="First day (UTC).")
    to: str = Field(description="Last day (UTC), inclusive.")
    totals: TotalsOut
    days: list[DayOut] = Field(description="Every day of the range, oldest first (zero-filled).")
    top_unanswered: list[TopQuestionOut]

    model_config = {"populate_by_name": True}


def analytics_out(figures: TenantAnalytics) -> AnalyticsOut:
    def latency(value: Latency) -> LatencyOut:
        return LatencyOut(median_ms=value.median_ms, p95_ms=value.p95_ms)

    return AnalyticsOut(
        tenant_id=figures.tenant_id,
        from_=figures.first_day,
        to=figures.last_day,
        totals=TotalsOut(
            questions=figures.questions,
            answered=figures.answered,
            unanswered=figures.unanswered,
            failed=figures.failed,
            pending=figures.pending,
            active_users=figures.active_users,
            feedback_up=figures.feedback_up,
            feedback_down=figures.feedback_down,
            latency=latency(figures.latency),
            feedback_ratio=figures.feedback_ratio,
        ),
        days=[
            DayOut(
                day=d.day,
                questions=d.questions,
                answered=d.answered,
                unanswered=d.unanswered,
                failed=d.failed,
                pending=d.pending,
                active_users=d.active_users,
                feedback_up=d.feedback_up,
                feedback_down=d.feedback_down,
                latency=latency(d.latency),
            )
            for d in figures.days
        ],
        top_unanswered=[
            TopQuestionOut(
                question=q.question,
                count=q.count,
                last_asked_at=datetime.fromtimestamp(q.last_asked_at / 1000, tz=UTC),
            )
            for q in figures.top_unanswered
        ],
    )


def _day(name: str, raw: str | None) -> date | None:
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw) if len(raw) == 10 else _bad_day(name)
    except ValueError:
        return _bad_day(name)


def _bad_day(name: str) -> date:
    raise bad_request(f"query parameter {name} must be a day as YYYY-MM-DD")


def parse_range(raw_from: str | None, raw_to: str | None, today: date) -> tuple[date, date]:
    """Defaults: ``to`` today (UTC), ``from`` 29 days before ``to`` (30 days)."""
    last = _day("to", raw_to) or today
    first = _day("from", raw_from) or last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first:
        raise bad_request("query parameter to must not be before from")
    if (last - first).days + 1 > MAX_DAYS:
        raise bad_request(f"the range may span at most {MAX_DAYS} days")
    return first, last


async def get_tenant_analytics(call: Call) -> dict[str, Any]:
    tenant_id = call.path_str("tenant_id")
    missing = f"no tenant {tenant_id}"
    if not call.principal.can_see(tenant_id):
        raise not_found(missing)
    first, last = parse_range(call.query["from"], call.query["to"], datetime.now(UTC).date())
    sessions = call.ctx.sessions
    if call.principal.is_operator and not await tenant_has_data(sessions, tenant_id):
        raise not_found(missing)
    figures = await tenant_analytics(sessions, tenant_id, first, last)
    # by alias: the response says "from" like the query (a Python field cannot be named so)
    return analytics_out(figures).model_dump(mode="json", by_alias=True)


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        f"{API}/tenants/{{tenant_id}}/analytics",
        get_tenant_analytics,
        "getTenantAnalytics",
        "Usage and feedback analytics of a tenant over a range of days",
        "analytics",
        response=AnalyticsOut,
        errors=(404,),
        query=(
            Param("from", description="First UTC day, YYYY-MM-DD (default: 29 days before to)."),
            Param("to", description="Last UTC day, inclusive, YYYY-MM-DD (default: today)."),
        ),
        description=(
            "Questions per day, answered / unanswered / failed / pending, median and p95 answer "
            "latency, feedback ratio, top unanswered questions and active users, from the "
            "fact tables the analytics worker role maintains. See docs/analytics.md."
        ),
    ),
)
