"""kill -9 of a sending worker mid-stream, then a restart: nobody receives a reply twice.

A send whose "sending" mark reached the changelog but whose result did not is *not* resent after
the restart (WhatsApp has no idempotency key): it is reported to the DLQ as ``uncertain``. So the
promise checked here is: every message was delivered exactly once or surfaced as uncertain, and
no recipient got anything twice.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from aiohttp import web

from onyx_wa import topics as t
from onyx_wa.bots import add_bot
from onyx_wa.broker import free_port
from onyx_wa.kafka import ensure_pipeline_topics, start_producer
from onyx_wa.settings import settings_env
from schemas.codec import get_codec
from sim.spec import load_validator
from sim.whatsapp import SIM_KEY, Faults, build_sim_app
from store.migrate import upgrade
from tests.test_egress_sender import outbound
from tests.test_ingress_http import read_topic

pytestmark = pytest.mark.timeout(240)
N = 60


def spawn_worker(env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "onyx_wa.cli", "worker", "--role", "egress"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def test_kill_9_between_send_and_commit_never_sends_twice(kafka, tmp_path):
    sim_port = free_port()
    sim_app = build_sim_app(validator=load_validator())
    runner = web.AppRunner(sim_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", sim_port).start()
    state = sim_app[SIM_KEY]
    state.faults = Faults(latency_ms=40)  # keep sends in flight when the worker dies
    from cryptography.fernet import Fernet

    settings = kafka.settings(
        data_dir=tmp_path, encryption_key=Fernet.generate_key().decode(),
        graph_api_url=f"http://127.0.0.1:{sim_port}", worker_web_port=free_port(),
        log_level="WARNING",
    )  # fmt: skip
    await ensure_pipeline_topics(settings)
    await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
    pnid = str(uuid.uuid4().int)[:15]
    await add_bot(
        settings, tenant_id="crash", phone_number_id=pnid, app_secret="s", verify_token="v",
        access_token="a", throughput_per_s=1000,
    )  # fmt: skip
    env = {**os.environ, **settings_env(settings)}
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115
    worker = spawn_worker(env, log)
    restarted = None
    try:
        bot = type("Bot", (), {"tenant_id": "crash", "phone_number_id": pnid})
        producer = await start_producer(settings)
        records = [outbound(bot, f"1444{i:07d}", f"reply {i}") for i in range(N)]
        for r in records:
            await producer.send(
                t.full_name(t.OUTBOUND, settings.topic_prefix),
                get_codec().encode("OutboundMessage", r),
                key=f"crash:{pnid}".encode(),
            )
        await producer.flush()
        await producer.stop()
        deadline = time.monotonic() + 90
        while len(state.messages) < 15 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert state.messages, (tmp_path / "worker.log").read_text()[-2000:]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        at_kill = len(state.messages)
        assert at_kill < N, "the worker finished before it was killed: nothing was tested"
        restarted = spawn_worker(env, log)
        dlq_name = t.full_name(t.OUTBOUND_DLQ, settings.topic_prefix)
        deadline = time.monotonic() + 120
        uncertain: list[dict] = []
        while time.monotonic() < deadline:
            uncertain = [
                d for d in await read_topic(settings, dlq_name, 0, 0.5)
                if d["error_class"] == "uncertain"
            ]  # fmt: skip
            accounted = {m["to"] for m in state.messages} | {
                d["original"]["chat_id"] for d in uncertain
            }
            if len(accounted) >= N:  # a message may be both delivered and surfaced
                break
            await asyncio.sleep(0.5)
        per_recipient = collections.Counter(m["to"] for m in state.messages)
        assert max(per_recipient.values()) == 1, "a recipient got a reply twice"
        delivered = set(per_recipient)
        surfaced = {d["original"]["chat_id"] for d in uncertain}
        assert delivered | surfaced == {r["chat_id"] for r in records}
        assert len(delivered) + len(surfaced - delivered) == N
    finally:
        for proc in (worker, restarted):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        await runner.cleanup()
