"""Egress benchmark: one egress worker's sends/s against the simulator, throttling off, versus
a bare aiohttp client posting the same JSON (same simulator, same run); and the token bucket's
precision at 80/s and 1,000/s.

The simulator runs in its own process (``onyx-wa sim``) so it does not share the event loop
with the worker being measured.

Like with like: both sides post the same payloads to the same simulator number (throughput
limit lifted) over one pooled aiohttp session with the same concurrency (``send_concurrency``,
64): the bare client through a semaphore, the worker through its HTTP slots. The worker also
consumes the outbound topic and writes its Kafka records (the durable "sending" mark, the
"sent" mark, the wamid index, the result), which is the cost being measured. The backlog is
produced before the worker starts and the clock starts when the worker has its partitions; it
stops when the simulator has counted every message (``GET /_sim/messages/count``: polling the
full message list cost the worker's process more than a third of its CPU). The baseline runs
before and after the worker; the mean is the figure.

Then the floors (``bench/egress_floors.py``: senders that only consume, decode, post and ack)
run on the same backlog, one after another, with a bare client run after each: each floor is
compared with the mean of the bare runs just before and just after it, as the worker is.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from bench.egress_floors import until_sent, wait_ready
from bench.ingress import wait_http
from egress.compose import text_message
from egress.throttle import TokenBucket
from onyx_wa import topics as t
from onyx_wa.broker import EmbeddedBroker, free_port
from onyx_wa.settings import load_settings, settings_env


async def _count(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/_sim/messages/count") as resp:
        return int((await resp.json())["count"])


async def bucket_precision(rate: float, seconds: float = 3.0) -> float:
    bucket = TokenBucket(rate, burst=1)
    n = int(rate * seconds)
    started = time.perf_counter()
    for _ in range(n):
        await bucket.acquire()
    return n / (time.perf_counter() - started)


async def _floors(
    settings: Any,
    http: aiohttp.ClientSession,
    base: str,
    topic: str,
    n: int,
    concurrency: int,
    bare_client: Callable[[], Awaitable[float]],
    bare_before: float,
) -> dict[str, tuple[float, float]]:
    """Sends/s of each floor (``bench.egress_floors``) on the worker's backlog, with the bare
    client's sends/s around it: the mean of the bare runs just before and just after, as for
    the worker, so that each floor is compared with the machine as it was at that moment.
    ``bare_before``: the bare run that ended the worker's measurement."""
    from bench.egress_floors import aiokafka_floor, faust_floor, poster
    from egress.stage import SEND_WINDOW_FACTOR

    post = poster(http, base, settings.graph_api_version, "a", concurrency)
    window = SEND_WINDOW_FACTOR * concurrency
    rates: dict[str, tuple[float, float]] = {}
    floors = {
        "faust": faust_floor,
        "faust_eager": partial(faust_floor, eager=True),
        "aiokafka": aiokafka_floor,
    }
    before = bare_before
    for name, floor in floors.items():
        rate = await floor(settings, topic, n, post, lambda: _count(http, base), window)
        async with http.delete(f"{base}/_sim/messages"):
            pass
        after = await bare_client()
        rates[name] = (rate, (before + after) / 2)
        before = after
    return rates


async def _run(n: int, concurrency: int, with_floors: bool = True) -> dict[str, Any]:
    from onyx_wa.bots import add_bot
    from onyx_wa.gc_tuning import tune_gc
    from onyx_wa.kafka import ensure_pipeline_topics, start_producer
    from schemas.codec import get_codec
    from store.migrate import upgrade
    from streams.worker import Worker

    data = Path(tempfile.mkdtemp(prefix="onyx-wa-bench-egress-"))
    broker = EmbeddedBroker(port=free_port())
    await broker.start()
    sim_port = free_port()
    settings = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu", data_dir=data, partitions=4,
        encryption_key=Fernet.generate_key().decode(), graph_api_url=f"http://127.0.0.1:{sim_port}",
        send_concurrency=concurrency, log_level="WARNING", kafka_session_timeout_s=6,
        send_throttle=False,
    )  # fmt: skip
    env = {**os.environ, **settings_env(settings)}
    sim = subprocess.Popen(
        [sys.executable, "-m", "onyx_wa.cli", "sim", "--port", str(sim_port)], env=env
    )
    base = f"http://127.0.0.1:{sim_port}"
    pnid = str(uuid.uuid4().int)[:15]
    try:
        await wait_http(f"{base}/healthz")
        await ensure_pipeline_topics(settings)
        await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
        await add_bot(
            settings, tenant_id="bench", phone_number_id=pnid, app_secret="s", verify_token="v",
            access_token="a", throughput_per_s=1000,
        )  # fmt: skip
        # the collector as a worker process sets it (``serve_worker``), for the whole process:
        # the bare client and the floors run with it too
        tune_gc(settings.gc_young_threshold)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/_sim/numbers/{pnid}", json={"throughput_per_s": 1e9}):
                pass
            payloads = [text_message(f"1{i:010d}", f"answer {i}") for i in range(n)]
            # baseline: a bare client posting the same JSON, same concurrency
            sem = asyncio.Semaphore(concurrency)
            url = f"{base}/v25.0/{pnid}/messages"

            async def post(p: dict) -> None:
                async with sem, http.post(url, json=p, headers={"Authorization": "Bearer a"}) as r:
                    await r.read()

            async def bare_client() -> float:
                started = time.perf_counter()
                await asyncio.gather(*(post(p) for p in payloads))
                rate = n / (time.perf_counter() - started)
                async with http.delete(f"{base}/_sim/messages"):
                    pass
                return rate

            # the baseline runs before and after the worker and the mean is used: on a shared
            # machine one short run can land in a busy or an idle moment
            baseline_before = await bare_client()
            # the backlog is produced before the worker starts, so the measured window holds
            # only the worker's own work (like the baseline, whose payloads are built up front)
            producer = await start_producer(settings)
            topic = t.full_name(t.OUTBOUND, settings.topic_prefix)
            codec = get_codec()
            for i, p in enumerate(payloads):
                record = {
                    "outbound_id": f"b{i}:0", "request_id": f"b{i}", "part_index": 0, "part_count": 1,
                    "tenant_id": "bench", "phone_number_id": pnid, "chat_id": p["to"], "kind": "text",
                    "payload_json": json.dumps(p), "created_at": int(time.time() * 1000),
                }  # fmt: skip
                await producer.send(
                    topic, codec.encode("OutboundMessage", record), key=f"bench:{pnid}".encode()
                )
            await producer.flush()
            await producer.stop()
            worker = Worker(settings, ["egress"])
            await worker.start()
            tune_gc(settings.gc_young_threshold)  # what serve_worker does once started
            # the clock starts when the worker has its partitions (it starts consuming then):
            # group join is not part of the figure, the worker's first fetch and table
            # recovery are
            await wait_ready(worker.ready, "egress worker")
            started = time.perf_counter()
            await until_sent(n, lambda: _count(http, base))
            worker_rate = n / (time.perf_counter() - started)
            await worker.stop()
            async with http.delete(f"{base}/_sim/messages"):
                pass
            baseline_after = await bare_client()
            baseline = (baseline_before + baseline_after) / 2
            floors = (
                await _floors(
                    settings, http, base, topic, n, concurrency, bare_client, baseline_after
                )
                if with_floors
                else {}
            )
        p80 = await bucket_precision(80)
        p1000 = await bucket_precision(1000)
        result = {
            "messages": n,
            "worker_sends_per_s": round(worker_rate, 1),
            "bare_client_sends_per_s": round(baseline, 1),
            "bare_client_runs": [round(baseline_before, 1), round(baseline_after, 1)],
            "ratio": round(worker_rate / baseline, 2),
            **{f"floor_{name}_sends_per_s": round(r, 1) for name, (r, _) in floors.items()},
            **{
                f"floor_{name}_bare_client_sends_per_s": round(b, 1)
                for name, (_, b) in floors.items()
            },
            **{f"floor_{name}_ratio": round(r / b, 2) for name, (r, b) in floors.items()},
            "bucket_80_achieved": round(p80, 2),
            "bucket_1000_achieved": round(p1000, 2),
        }
        print(
            f"egress: worker {worker_rate:.0f} sends/s vs bare client {baseline:.0f} sends/s "
            f"(ratio {worker_rate / baseline:.2f}); token bucket 80/s → {p80:.2f}/s, "
            f"1000/s → {p1000:.1f}/s",
            flush=True,
        )
        for name, (rate, bare) in floors.items():
            print(
                f"  floor ({name}: consume, decode, post, ack; nothing else): {rate:.0f} sends/s, "
                f"ratio {rate / bare:.2f} to the bare client runs around it ({bare:.0f} sends/s)",
                flush=True,
            )
        return result
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        broker.stop()


def run(n: int = 3000, concurrency: int = 64) -> dict[str, Any]:
    # the event loop production processes run on (``onyx_wa.runtime.run_service``: uvloop where
    # available) — for the worker and the bare client alike
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(_run(n, concurrency))
    return uvloop.run(_run(n, concurrency))


if __name__ == "__main__":  # pragma: no cover
    run()
