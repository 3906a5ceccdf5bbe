"""Consumer lag as Prometheus metrics: a collector over the latest report, refreshed in the
background.

Why a custom collector rather than module-level gauges: partitions and groups come and go, and a
gauge child that is never removed keeps reporting a stale lag forever. Yielding fresh metric
families from the last report means a vanished group simply disappears from the next scrape.
Why refresh in the background: a scrape must answer in milliseconds, and reading offsets and
record timestamps takes a broker round trip per partition.

Metrics (labels ``group``, ``topic``, ``partition``):
- ``onyx_wa_consumer_lag_messages``: end offset − committed offset, clamped at 0.
- ``onyx_wa_consumer_lag_seconds``: age of the oldest unconsumed record (0 when caught up).
- ``onyx_wa_consumer_committed_offset``: committed offset (−1: the group never committed).
- ``onyx_wa_topic_end_offset`` (labels ``topic``, ``partition``): the high watermark.
- ``onyx_wa_consumer_group_status``: :class:`ops.lag.LagStatus` as a number per partition, and
  per group with ``topic="*"``, ``partition="*"``: 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 ERR.
- ``onyx_wa_lag_exporter_last_success_timestamp_seconds`` and
  ``onyx_wa_lag_exporter_refresh_errors_total``: the exporter's own health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from onyx_wa.prometheus_helpers import private_registry
from onyx_wa.settings import Settings
from ops.lag import DEFAULT_WINDOW, LagEvaluator, LagReport, collect_lag

log = logging.getLogger(__name__)


class LagCollector(Collector):
    """Turns the latest :class:`LagReport` into metric families at scrape time."""

    def __init__(self) -> None:
        self.report: LagReport | None = None
        self.last_success: float = 0.0
        self.refresh_errors: int = 0

    def collect(self) -> Iterator[Metric]:
        labels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily(
            "onyx_wa_consumer_lag_messages", "Records not yet consumed by the group", labels=labels
        )
        seconds = GaugeMetricFamily(
            "onyx_wa_consumer_lag_seconds",
            "Age of the oldest record the group has not consumed (0 when caught up)",
            labels=labels,
        )
        committed = GaugeMetricFamily(
            "onyx_wa_consumer_committed_offset",
            "Committed offset of the group (-1 when it never committed)",
            labels=labels,
        )
        end = GaugeMetricFamily(
            "onyx_wa_topic_end_offset", "High watermark", labels=["topic", "partition"]
        )
        status = GaugeMetricFamily(
            "onyx_wa_consumer_group_status",
            "0 OK, 1 WARN, 2 STALL, 3 STOP, 4 ERR; per partition and per group (topic=*)",
            labels=labels,
        )
        ends_seen: set[tuple[str, int]] = set()
        for group in self.report.groups if self.report else []:
            for p in group.partitions:
                values = [group.group, p.topic, str(p.partition)]
                lag.add_metric(values, p.lag)
                seconds.add_metric(values, p.lag_seconds)
                committed.add_metric(values, -1 if p.committed is None else p.committed)
                status.add_metric(values, int(p.status))
                if (p.topic, p.partition) not in ends_seen:
                    ends_seen.add((p.topic, p.partition))
                    end.add_metric([p.topic, str(p.partition)], p.end)
            status.add_metric([group.group, "*", "*"], int(group.status))
        yield from (lag, seconds, committed, end, status)
        success = GaugeMetricFamily(
            "onyx_wa_lag_exporter_last_success_timestamp_seconds",
            "When lag was last collected successfully (unix time)",
        )
        success.add_metric([], self.last_success)
        yield success
        errors = CounterMetricFamily(
            "onyx_wa_lag_exporter_refresh_errors", "Failed lag collections"
        )
        errors.add_metric([], self.refresh_errors)
        yield errors


class LagExporter:
    """The collector, its refresh loop and the HTTP server (``/metrics``, ``/healthz``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        interval_s: float = 15.0,
        groups: list[str] | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.groups = groups
        self.evaluator = LagEvaluator(window)
        self.collector = LagCollector()
        self.registry = private_registry(auto_describe=False)
        self.registry.register(self.collector)
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def healthy(self) -> bool:
        """Fresh within three intervals: one slow or failed refresh is not an outage."""
        return time.time() - self.collector.last_success <= 3 * self.interval_s + 5

    async def refresh(self) -> LagReport | None:
        """Collect once; on failure keep serving the previous figures and count the error."""
        try:
            report = await collect_lag(self.settings, self.groups, evaluator=self.evaluator)
        except Exception as exc:
            self.collector.refresh_errors += 1
            log.warning("lag collection failed: %s: %s", type(exc).__name__, exc)
            return None
        self.collector.report = report
        self.collector.last_success = time.time()
        return report

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            await self.refresh()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.healthy:
            return web.json_response({"status": "ok", "last_success": self.collector.last_success})
        return web.json_response(
            {
                "status": "stale",
                "last_success": self.collector.last_success or None,
                "refresh_errors": self.collector.refresh_errors,
            },
            status=503,
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve and start refreshing; returns the bound port (``port=0``: an ephemeral one)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else port
        self._task = asyncio.create_task(self._loop(), name="lag-exporter-refresh")
        return self.port

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def run_lag_exporter(
    settings: Settings,
    host: str = "0.0.0.0",
    port: int = 9308,
    interval_s: float = 15.0,
    groups: list[str] | None = None,
) -> None:
    """Serve lag metrics until cancelled (``onyx-wa lag-exporter``)."""
    exporter = LagExporter(settings, interval_s=interval_s, groups=groups)
    bound = await exporter.start(host, port)
    log.info("lag exporter on http://%s:%d/metrics every %.0f s", host, bound, interval_s)
    try:
        await asyncio.Event().wait()
    finally:
        await exporter.stop()


__all__ = ["LagCollector", "LagExporter", "run_lag_exporter"]
