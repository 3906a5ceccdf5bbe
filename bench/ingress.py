"""Ingress benchmark: signed webhook POSTs → broker ack, against a bare aiohttp baseline.

Everything runs on this machine at once, as the issue asks: the embedded broker, the ingress
(``onyx-wa ingress`` in its own process, as in production), a bare aiohttp server answering 200
without work (the baseline, also its own process) and the load client (this process).

Two kinds of load:
- closed loop at increasing concurrency: requests/s and p50/p99 latency;
- open loop at a fixed offered rate (1,000 req/s): latency measured from each request's
  *scheduled* time, so a stall is not hidden by the client slowing down (coordinated omission).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from bench.stats import percentile
from onyx_wa.broker import EmbeddedBroker, free_port
from onyx_wa.settings import load_settings, settings_env
from sim import meta

BASELINE_SERVER = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/webhooks/whatsapp", ok)
app.router.add_get("/healthz", lambda r: web.Response(text="ok"))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


async def closed_loop(
    url: str, body: bytes, headers: dict, concurrency: int, seconds: float
) -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "errors": errors,
    }


async def open_loop(url: str, body: bytes, headers: dict, rate: float, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as http:

        async def one(scheduled: float) -> None:
            nonlocal errors
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter() + 0.2
        await asyncio.gather(*(one(start + i / rate) for i in range(total)))
    return {
        "offered_rps": rate,
        "sent": total,
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "errors": errors,
    }


async def _run(concurrency: list[int], seconds: float, rate: float, rounds: int) -> dict[str, Any]:
    from onyx_wa.bots import add_bot
    from store.migrate import upgrade

    data_dir = Path(tempfile.mkdtemp(prefix="onyx-wa-bench-"))
    broker = EmbeddedBroker(port=free_port())
    await broker.start()
    ingress_port, base_port = free_port(), free_port()
    settings = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        broker_flavor="tansu",
        data_dir=data_dir,
        ingress_port=ingress_port,
        partitions=8,
        log_level="WARNING",
        tenant_flood_ceiling_per_s=1e9,
        encryption_key=Fernet.generate_key().decode(),
    )
    from onyx_wa.kafka import ensure_pipeline_topics

    await ensure_pipeline_topics(settings)
    await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
    pnid = "106540352242922"
    await add_bot(
        settings, tenant_id="bench", phone_number_id=pnid, app_secret="bench-secret",
        verify_token="v", access_token="a",
    )  # fmt: skip
    env = {**os.environ, **settings_env(settings)}
    profile = os.environ.get("ONYX_WA_BENCH_PROFILE")  # a path: cProfile the ingress process
    prefix = ["-m", "cProfile", "-o", profile] if profile else []
    ingress = subprocess.Popen([sys.executable, *prefix, "-m", "onyx_wa.cli", "ingress"], env=env)
    baseline = subprocess.Popen([sys.executable, "-c", BASELINE_SERVER, str(base_port)])
    doc = meta.notification(
        pnid, messages=[meta.text_message("15551230000", "How many vacation days do I get?")],
        contacts=[meta.contact("15551230000")],
    )  # fmt: skip
    body = meta.serialise(doc)
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": meta.sign("bench-secret", body),
    }
    try:
        await wait_http(f"http://127.0.0.1:{ingress_port}/healthz")
        await wait_http(f"http://127.0.0.1:{base_port}/healthz")
        ingress_url = f"http://127.0.0.1:{ingress_port}/webhooks/whatsapp"
        base_url = f"http://127.0.0.1:{base_port}/webhooks/whatsapp"
        await closed_loop(ingress_url, body, headers, 8, 1.0)  # warm-up
        rows = []
        for c in concurrency:
            ing = [await closed_loop(ingress_url, body, headers, c, seconds) for _ in range(rounds)]
            bas = [await closed_loop(base_url, body, headers, c, seconds) for _ in range(rounds)]
            row = {
                "concurrency": c,
                "ingress_rps": statistics.median(r["rps"] for r in ing),
                "ingress_p50_ms": statistics.median(r["p50_ms"] for r in ing),
                "ingress_p99_ms": statistics.median(r["p99_ms"] for r in ing),
                "baseline_rps": statistics.median(r["rps"] for r in bas),
                "baseline_p99_ms": statistics.median(r["p99_ms"] for r in bas),
                "errors": sum(r["errors"] for r in ing),
            }
            row["ratio"] = round(row["ingress_rps"] / row["baseline_rps"], 2)
            rows.append(row)
            print(
                f"c={c:<4} ingress {row['ingress_rps']:>8.0f} req/s p50 {row['ingress_p50_ms']:6.2f} ms "
                f"p99 {row['ingress_p99_ms']:6.2f} ms | baseline {row['baseline_rps']:>8.0f} req/s "
                f"p99 {row['baseline_p99_ms']:6.2f} ms | ratio {row['ratio']:.2f}",
                flush=True,
            )
        fixed = await open_loop(ingress_url, body, headers, rate, seconds)
        fixed_base = await open_loop(base_url, body, headers, rate, seconds)
        print(
            f"open loop {rate:.0f} req/s: ingress p50 {fixed['p50_ms']} ms p99 {fixed['p99_ms']} ms "
            f"(errors {fixed['errors']}) | baseline p99 {fixed_base['p99_ms']} ms",
            flush=True,
        )
        return {
            "closed_loop": rows,
            "open_loop": {"ingress": fixed, "baseline": fixed_base},
            "best_ratio": max(r["ratio"] for r in rows),
            "median_ratio": statistics.median(r["ratio"] for r in rows),
        }
    finally:
        for proc in (ingress, baseline):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()


def run(
    concurrency: list[int] | None = None,
    seconds: float = 4.0,
    rate: float = 1000.0,
    rounds: int = 1,
) -> dict[str, Any]:
    return asyncio.run(_run(concurrency or [8, 32, 128], seconds, rate, rounds))


if __name__ == "__main__":  # pragma: no cover
    run()
