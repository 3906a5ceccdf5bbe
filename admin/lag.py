"""``GET /api/v1/lag``: consumer lag as JSON, for operators (the web UI's Lag page).

The figures are exactly those of ``onyx-wa lag --json`` (:func:`ops.lag.collect_lag`, with the
same per group/topic/partition committed and end offsets, lag in messages and seconds and a
Burrow-style status). One :class:`LagSource` per admin process keeps a
:class:`ops.lag.LagEvaluator` between calls, so a page that refreshes sees WARN/STALL/STOP over
the window like ``onyx-wa lag --watch`` does; a single call can only say OK or ERR.

Why operators only (a tenant admin gets **403**): consumer groups and topics are shared by every
tenant of the deployment, so lag cannot be scoped to one tenant, and it shows the whole
deployment's traffic.

Why injected: the admin process does not need Kafka for anything else, so the broker is reached
only when this route is called (a 503 when it does not answer), and tests pass a fake source in
``AdminContext.lag_source``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from admin.api import API, Call, Param, Route
from admin.errors import ApiError, forbidden

LagSourceFn = Callable[[list[str] | None], Awaitable[dict[str, Any]]]
COLLECT_TIMEOUT_S = 30.0
MIN_INTERVAL_S = 2.0  # several open pages share one collection per interval

Status = Literal["OK", "WARN", "STALL", "STOP", "ERR"]


class PartitionLagOut(BaseModel):
    topic: str
    partition: int
    committed: int | None = Field(description="Committed offset; null: the group never committed.")
    end: int = Field(description="End offset (the next offset to be written).")
    lag: int = Field(description="Records not yet consumed (clamped at 0).")
    lag_seconds: float = Field(description="Age of the oldest unconsumed record, in seconds.")
    status: Status
    error: str | None


class GroupLagOut(BaseModel):
    group: str
    status: Status = Field(description="The worst partition status (ERR when unreadable).")
    lag: int = Field(description="Sum over the partitions.")
    lag_seconds: float = Field(description="Maximum over the partitions.")
    error: str | None
    partitions: list[PartitionLagOut]


class LagOut(BaseModel):
    at: float = Field(description="When the figures were collected (Unix time, seconds).")
    groups: list[GroupLagOut]


class LagSource:
    """Collects lag with one evaluator kept between calls, at most once per ``min_interval_s``."""

    def __init__(self, settings: Any, *, min_interval_s: float = MIN_INTERVAL_S) -> None:
        from ops.lag import LagEvaluator

        self.settings = settings
        self.evaluator = LagEvaluator()
        self.min_interval_s = min_interval_s
        self._lock = asyncio.Lock()
        self._last: tuple[float, tuple[str, ...] | None, dict[str, Any]] | None = None

    async def __call__(self, groups: list[str] | None) -> dict[str, Any]:
        from ops.lag import collect_lag

        key = tuple(groups) if groups else None
        async with self._lock:
            if self._last is not None:
                taken, last_key, report = self._last
                if last_key == key and time.monotonic() - taken < self.min_interval_s:
                    return report
            found = await collect_lag(self.settings, groups, evaluator=self.evaluator)
            report = found.to_dict()
            self._last = (time.monotonic(), key, report)
            return report


def _source(call: Call) -> LagSourceFn:
    ctx = call.ctx
    source = getattr(ctx, "lag_source", None)
    if source is None:
        if getattr(ctx, "settings", None) is None:
            raise ApiError(503, "kafka_unavailable", "this admin has no Kafka settings")
        source = ctx.lag_source = LagSource(ctx.settings)
    return source


async def get_lag(call: Call) -> dict[str, Any]:
    if not call.principal.is_operator:
        raise forbidden("consumer lag is deployment-wide: operators only")
    group = call.query["group"]
    try:
        report = await asyncio.wait_for(
            _source(call)([group] if group else None), COLLECT_TIMEOUT_S
        )
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - the broker's failure is the client's answer
        raise ApiError(
            503, "kafka_unavailable", f"could not read consumer lag ({type(exc).__name__})"
        ) from None
    return LagOut.model_validate(report).model_dump(mode="json")


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        f"{API}/lag",
        get_lag,
        "getLag",
        "Consumer lag per group, topic and partition (operators only)",
        "lag",
        response=LagOut,
        errors=(403, 503),
        query=(Param("group", description="Only this consumer group (default: discovered)."),),
        description=(
            "The figures of `onyx-wa lag --json`: committed and end offsets, lag in records and "
            "seconds, and a Burrow-style status over the last calls of this admin process. "
            "Tenant admins get 403 (groups are shared by every tenant). 503 when the broker "
            "does not answer. See docs/operations.md."
        ),
    ),
)
