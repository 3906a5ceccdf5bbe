"""Every long-running process serves Prometheus metrics on ``/metrics``: the ingress, a worker,
the lag exporter and the admin app. Each is scraped over a real socket and parsed with
``prometheus_client``'s parser; each exports the process metrics (``process_*``, ``python_*``)
next to its own. The admin's endpoint needs no token and labels requests by route pattern only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from onyx_wa.broker import free_port
from onyx_wa.settings import load_settings

# Families (the parser drops a counter's ``_total``) the process collectors add on Linux.
PROCESS_FAMILIES = {
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_cpu_seconds",
    "process_open_fds",
    "python_info",
    "python_gc_objects_collected",
}


async def scrape(url: str) -> dict[str, list[Sample]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


async def serve(app: web.Application) -> tuple[str, Callable[[], Awaitable[None]]]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}", runner.cleanup


def assert_process_metrics(families: dict[str, list[Sample]]) -> None:
    missing = PROCESS_FAMILIES - set(families)
    assert not missing, f"no process metrics {sorted(missing)}"
    [rss] = families["process_resident_memory_bytes"]
    assert rss.value > 0


@pytest.fixture
def settings(tmp_path: Any) -> Any:
    # nothing listens on this broker address: these endpoints must not need one
    return load_settings(data_dir=tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")


async def test_ingress_metrics_include_process_metrics(settings) -> None:
    from ingress.app import build_ingress_app

    class NoBots:
        async def get(self, phone_number_id: str) -> None:
            return None

        async def verify_tokens(self) -> set[str]:
            return set()

    app = build_ingress_app(settings, bots=NoBots(), publisher=object())  # type: ignore[arg-type]
    base, close = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/webhooks/whatsapp", data=b"not json") as resp:
                assert resp.status == 400
        families = await scrape(base + "/metrics")
    finally:
        await close()
    assert_process_metrics(families)
    requests = families["onyx_wa_ingress_requests"]
    assert any(s.labels.get("outcome") == "bad_json" and s.value == 1 for s in requests)


async def test_worker_metrics_include_process_and_stage_metrics(settings) -> None:
    from onyx_wa.metrics import STAGE_EVENTS
    from streams.worker import Worker

    STAGE_EVENTS.labels("answers", "ok")  # a labelled child, as a running stage creates it
    worker = Worker(settings, roles=["answers"])
    port = free_port()
    await worker._start_web(port)  # the web side alone: no broker, no Faust app
    try:
        families = await scrape(f"http://127.0.0.1:{port}/metrics")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 503  # not started: not ready, but metrics are served
    finally:
        await worker.stop()
    assert_process_metrics(families)
    assert "onyx_wa_stage_events" in families and "onyx_wa_answer_errors" in families


async def test_lag_exporter_metrics_include_process_metrics(settings) -> None:
    from ops.lag_exporter import LagExporter

    exporter = LagExporter(settings, interval_s=60)
    port = await exporter.start("127.0.0.1", 0)
    try:
        families = await scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        await exporter.stop()
    assert_process_metrics(families)
    assert "onyx_wa_lag_exporter_refresh_errors" in families


@pytest.fixture
async def admin(store) -> AsyncIterator[str]:
    from admin.app import AdminContext, create_app
    from admin.auth import TokenAuth

    context = AdminContext(
        sessions=store.sessions,
        box=store.box,
        auth=TokenAuth.from_setting("op-token-metrics-0123456789=operator"),
    )
    base, close = await serve(create_app(context))
    try:
        yield base
    finally:
        await close()


async def test_admin_metrics_count_requests_by_route_without_a_token_or_ids(admin) -> None:
    token = {"Authorization": "Bearer op-token-metrics-0123456789"}
    phone = "4915112345678"
    async with aiohttp.ClientSession() as http:
        async with http.get(admin + "/api/v1/bots", headers=token) as resp:
            assert resp.status == 200
        async with http.get(admin + "/api/v1/bots") as resp:  # no token
            assert resp.status == 401
        async with http.get(admin + "/api/v1/bots/123456/users/" + phone, headers=token) as resp:
            assert resp.status == 404
        async with http.get(admin + f"/no/such/{phone}") as resp:
            assert resp.status == 404
        async with http.get(admin + "/", allow_redirects=False) as resp:
            assert resp.status in (301, 302, 307, 308)
        async with http.get(admin + "/metrics") as resp:  # no token needed, none leaked
            text = await resp.text()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert_process_metrics(families)

    counts = {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in families["onyx_wa_admin_requests"]
        if s.name == "onyx_wa_admin_requests_total"
    }
    assert counts[("GET", "/api/v1/bots", "200")] == 1
    assert counts[("GET", "/api/v1/bots", "401")] == 1
    assert counts[("GET", "/api/v1/bots/{bot_id}/users/{user_id}", "404")] == 1
    assert counts[("GET", "unmatched", "404")] == 1
    assert any(route == "/" and status.startswith("3") for _, route, status in counts)
    latency = families["onyx_wa_admin_request_seconds"]
    assert any(
        s.name.endswith("_count") and s.labels.get("route") == "/api/v1/bots" and s.value == 2
        for s in latency
    )
    # ids, phone numbers and tokens never become label values
    values = {v for samples in families.values() for s in samples for v in s.labels.values()}
    assert not [v for v in values if phone in v or "123456" in v or "op-token" in v]
    assert phone not in text and "op-token" not in text


def test_sum_samples_adds_the_matching_series_of_a_scrape():
    from prometheus_client import Counter, generate_latest

    from onyx_wa.prometheus_helpers import private_registry, sum_samples

    registry = private_registry()
    sends = Counter("x_sends_total", "sends", ["code"], registry=registry)
    sends.labels("200").inc(3)
    sends.labels("500").inc(2)
    text = generate_latest(registry).decode()
    assert sum_samples(text, "x_sends_total") == 5
    assert sum_samples(text, "x_sends_total", code="500") == 2
    assert sum_samples(text, "x_sends_total", code="404") == 0
    assert sum_samples(text, "process_cpu_seconds_total") > 0  # the process series are there
