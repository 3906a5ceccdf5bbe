"""kill -9 of a sending worker mid-stream, then a restart: nobody receives a reply twice.

A send whose "sending" mark reached the changelog but whose result did not is uncertain: WhatsApp
has no idempotency key. Two policies, one test each:

- ``reconcile`` (the default): every send carries its outbound id as ``biz_opaque_callback_data``;
  the simulator, like Meta, echoes it in the status webhooks it posts to the ingress; the
  restarted worker confirms uncertain sends from those statuses and resends only the ones no
  status names. Promise: every recipient gets its reply exactly once.
- ``dlq``: never resend; surface the uncertain send on the DLQ. Promise: every message was
  delivered exactly once or surfaced as uncertain, and no recipient got anything twice.
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
from onyx_wa.prometheus_helpers import sum_samples
from onyx_wa.settings import settings_env
from schemas.codec import get_codec
from sim.spec import load_validator
from sim.whatsapp import SIM_KEY, Faults, build_sim_app
from store.migrate import upgrade
from tests.test_egress_sender import outbound
from tests.test_ingress_http import read_topic

pytestmark = pytest.mark.timeout(240)
N = 60


def spawn_worker(
    env: dict[str, str], log, roles: tuple[str, ...] = ("egress",)
) -> subprocess.Popen:
    role_args = [arg for role in roles for arg in ("--role", role)]
    return subprocess.Popen(
        [sys.executable, "-m", "onyx_wa.cli", "worker", *role_args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def _metric(port: int, name: str, **labels: str) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return sum_samples(await r.text(), name, **labels)


async def test_kill_9_mid_send_reconciles_from_statuses_exactly_once(kafka, tmp_path):
    """The default policy: after the restart every recipient has exactly one reply."""
    from ingress.app import start_ingress

    ingress_port = free_port()
    sim_port = free_port()
    pnid = str(uuid.uuid4().int)[:15]
    sim_app = build_sim_app(
        validator=load_validator(), webhook_url=f"http://127.0.0.1:{ingress_port}/webhooks/whatsapp",
        app_secrets={pnid: "s"}, emit_statuses=True,
    )  # fmt: skip
    runner = web.AppRunner(sim_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", sim_port).start()
    state = sim_app[SIM_KEY]
    state.faults = Faults(latency_ms=40)  # keep sends in flight when the worker dies
    from cryptography.fernet import Fernet

    web_port = free_port()
    settings = kafka.settings(
        data_dir=tmp_path, encryption_key=Fernet.generate_key().decode(),
        graph_api_url=f"http://127.0.0.1:{sim_port}", worker_web_port=web_port,
        log_level="INFO", send_reconcile_s=6.0, ingress_port=ingress_port,
    )  # fmt: skip
    await ensure_pipeline_topics(settings)
    await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
    await add_bot(
        settings, tenant_id="recon", phone_number_id=pnid, app_secret="s", verify_token="v",
        access_token="a", throughput_per_s=1000,
    )  # fmt: skip
    close_ingress = await start_ingress(settings, host="127.0.0.1", port=ingress_port)
    env = {**os.environ, **settings_env(settings)}
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115
    roles = ("streams", "egress")
    worker = spawn_worker(env, log, roles)
    restarted = None
    try:
        bot = type("Bot", (), {"tenant_id": "recon", "phone_number_id": pnid})
        records = [outbound(bot, f"1555{i:07d}", f"reply {i}") for i in range(N)]
        await _produce(settings, pnid, "recon", records)
        await _kill_mid_stream(worker, state, tmp_path)
        restarted = spawn_worker(env, log, roles)
        expected = {r["chat_id"] for r in records}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if {m["to"] for m in state.messages} >= expected:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(settings.send_reconcile_s + 2)  # a late resend would show up now
        per_recipient = collections.Counter(m["to"] for m in state.messages)
        tail = (tmp_path / "worker.log").read_text()[-2000:]
        assert set(per_recipient) == expected, f"lost {expected - set(per_recipient)}; {tail}"
        twice = [r for r, n in per_recipient.items() if n > 1]
        assert not twice, f"recipients that got a reply twice: {twice}"
        assert all(m["payload"]["biz_opaque_callback_data"] for m in state.messages)
        outcomes = {
            o: await _metric(web_port, "onyx_wa_uncertain_sends_total", outcome=o)
            for o in ("confirmed", "resent", "dlq")
        }
        print("uncertain sends after the kill:", outcomes)
        assert outcomes["dlq"] == 0, outcomes
        # the kill came with sends in flight: some were uncertain, and none was lost or doubled
        assert outcomes["confirmed"] + outcomes["resent"] >= 1, outcomes
    finally:
        for proc in (worker, restarted):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        await close_ingress()
        await runner.cleanup()


async def _produce(settings, pnid: str, tenant: str, records: list[dict]) -> None:
    producer = await start_producer(settings)
    try:
        for r in records:
            await producer.send(
                t.full_name(t.OUTBOUND, settings.topic_prefix),
                get_codec().encode("OutboundMessage", r),
                key=f"{tenant}:{pnid}".encode(),
            )
        await producer.flush()
    finally:
        await producer.stop()


async def _kill_mid_stream(worker: subprocess.Popen, state, tmp_path) -> None:
    deadline = time.monotonic() + 90
    while len(state.messages) < 15 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert state.messages, (tmp_path / "worker.log").read_text()[-2000:]
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    assert len(state.messages) < N, "the worker finished before it was killed: nothing was tested"


async def test_kill_9_with_dlq_policy_never_sends_twice(kafka, tmp_path):
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
        log_level="WARNING", uncertain_sends="dlq",
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
        records = [outbound(bot, f"1444{i:07d}", f"reply {i}") for i in range(N)]
        await _produce(settings, pnid, "crash", records)
        await _kill_mid_stream(worker, state, tmp_path)
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
