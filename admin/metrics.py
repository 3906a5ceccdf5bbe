"""Prometheus metrics of the admin app, served on ``GET /metrics`` without a token.

Why no token: Prometheus scrapes without credentials by convention, and the admin listens on an
internal port. So nothing here may identify a tenant, a bot or a user: requests are labelled by
the route *pattern* (``/api/v1/bots/{bot_id}/users/{user_id}``, never the ids in the path), the
method and the status; unmatched paths share one ``route="unmatched"`` label, so a client probing
random paths cannot create series (or smuggle a phone number into a label). Plus the process
metrics every onyx-wa process exports (``process_*``, ``python_*``).

A private registry per app: tests build several admin apps in one process.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Histogram,
    generate_latest,
)

from onyx_wa.prometheus_helpers import private_registry

UNMATCHED = "unmatched"


class AdminMetrics:
    def __init__(self) -> None:
        self.registry = r = private_registry()
        self.requests = Counter(
            "onyx_wa_admin_requests_total",
            "Admin HTTP requests by method, route pattern and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "onyx_wa_admin_request_seconds",
            "Admin HTTP request handling time by method and route pattern",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        route = route_label(request)
        method = request.method if request.method in _METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    async def view(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(request: web.Request) -> str:
    """The matched route's pattern (no ids), or ``unmatched`` (404/405 of unknown paths)."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    return resource.canonical


METRICS_KEY = web.AppKey("admin_metrics", AdminMetrics)
