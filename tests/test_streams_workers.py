"""Real worker processes on the real broker: kill -9 and restart, two workers and rebalances.

Each test runs ``onyx-wa worker`` subprocesses (every role: streams, answers, egress) against the
session broker, an in-process WhatsApp simulator and the local answer backend, and feeds the raw
topic directly (the ingress is tested elsewhere). What is checked is what a user would see:
every question answered, nobody answered twice, conversation state kept across the crash.

A send that was in flight at the egress when its worker died is not resent after the restart
(WhatsApp has no idempotency key); it is surfaced on the DLQ as ``uncertain``. So "nothing lost"
means delivered or surfaced, and "nothing twice" means no recipient got the same reply twice.
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
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from onyx_wa import topics as t
from onyx_wa.bots import add_bot
from onyx_wa.broker import free_port
from onyx_wa.kafka import ensure_pipeline_topics, start_producer
from onyx_wa.prometheus_helpers import sum_samples
from onyx_wa.settings import Settings, settings_env
from schemas.codec import get_codec
from sim import meta
from sim.spec import load_validator
from sim.whatsapp import SIM_KEY, Faults, build_sim_app
from store.migrate import upgrade
from tests.test_ingress_http import read_topic

pytestmark = pytest.mark.timeout(300)
TENANT = "workers"


class Rig:
    """Simulator, settings, a bot and helpers to run worker processes and feed the raw topic."""

    def __init__(self, kafka: Any, tmp_path: Path, **overrides: Any) -> None:
        self.kafka = kafka
        self.tmp_path = tmp_path
        self.overrides = overrides
        self.pnid = str(uuid.uuid4().int)[:15]
        self.procs: list[subprocess.Popen] = []
        self.settings: Settings | None = None
        self.sim_state: Any = None
        self._runner: web.AppRunner | None = None
        self._log = None

    async def start(self) -> None:
        from cryptography.fernet import Fernet

        sim_port = free_port()
        sim_app = build_sim_app(validator=load_validator())
        self._runner = web.AppRunner(sim_app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", sim_port).start()
        self.sim_state = sim_app[SIM_KEY]
        self.settings = self.kafka.settings(
            data_dir=self.tmp_path, encryption_key=Fernet.generate_key().decode(),
            graph_api_url=f"http://127.0.0.1:{sim_port}", log_level="WARNING",
            user_questions_per_minute=1000,
            # no ingress here, so no status webhooks to reconcile uncertain sends from:
            # surface them on the DLQ (the reconcile policy is tested in test_egress_crash.py)
            **{"uncertain_sends": "dlq", **self.overrides},
        )  # fmt: skip
        await ensure_pipeline_topics(self.settings)
        await asyncio.to_thread(upgrade, self.settings.sqlalchemy_url)
        await add_bot(
            self.settings, tenant_id=TENANT, phone_number_id=self.pnid, app_secret="s",
            verify_token="v", access_token="a", throughput_per_s=1000,
        )  # fmt: skip
        self._log = open(self.tmp_path / "workers.log", "ab")  # noqa: SIM115

    def spawn(self, name: str) -> tuple[subprocess.Popen, int]:
        """A worker process (every role) with its own health/metrics port."""
        assert self.settings is not None
        port = free_port()
        env = {**os.environ, **settings_env(self.settings)}
        env["ONYX_WA_WORKER_WEB_PORT"] = str(port)
        # each process gets its own Faust data dir (RocksDB files are per process)
        env["ONYX_WA_DATA_DIR"] = str(self.tmp_path / name)
        env["DATABASE_URL"] = self.settings.sqlalchemy_url  # the one database, not per dir
        proc = subprocess.Popen(
            [sys.executable, "-m", "onyx_wa.cli", "worker"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)
        return proc, port

    async def wait_ready(self, port: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.procs[-1].poll() is not None:
                    break  # the worker exited: no point waiting
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"worker on :{port} not ready; log tail:\n{self.log_tail()}")

    async def metric(self, port: int, name: str, **labels: str) -> float:
        """The sum of a Prometheus counter's samples matching ``labels`` on a worker."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                return sum_samples(await resp.text(), name, **labels)

    async def produce(self, messages: list[tuple[str, str]]) -> None:
        """One raw delivery per ``(user, text)``, keyed by delivery id like the ingress does."""
        assert self.settings is not None
        codec = get_codec()
        topic = t.full_name(t.RAW, self.settings.topic_prefix)
        producer = await start_producer(self.settings)
        try:
            for user, text in messages:
                body = meta.serialise(
                    meta.notification(
                        self.pnid,
                        messages=[meta.text_message(user, text)],
                        contacts=[meta.contact(user)],
                    )
                )
                delivery = str(uuid.uuid4())
                record = {
                    "delivery_id": delivery, "received_at": int(time.time() * 1000),
                    "body": body, "headers": {"Content-Type": "application/json"},
                    "tenant_ids": [TENANT], "phone_number_ids": [self.pnid], "routed": True,
                }  # fmt: skip
                await producer.send(
                    topic, codec.encode("RawWebhook", record), key=delivery.encode()
                )
            await producer.flush()
        finally:
            await producer.stop()

    def texts_to(self, user: str) -> list[str]:
        return [m["body"] or "" for m in self.sim_state.messages if m["to"] == user]

    async def uncertain(self) -> set[str]:
        """Recipients whose send was surfaced on the DLQ as uncertain (in flight at a crash)."""
        assert self.settings is not None
        dlq = t.full_name(t.OUTBOUND_DLQ, self.settings.topic_prefix)
        return {
            d["original"]["chat_id"]
            for d in await read_topic(self.settings, dlq, 0, 0.5)
            if d["error_class"] == "uncertain"
        }

    def duplicates(self) -> list[tuple[str, str]]:
        sent = collections.Counter(
            (m["to"], m["type"], m["body"]) for m in self.sim_state.messages
        )  # fmt: skip
        return [key[:2] for key, n in sent.items() if n > 1]

    def log_tail(self) -> str:
        path = self.tmp_path / "workers.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
        if self._runner is not None:
            await self._runner.cleanup()


async def _until(predicate, timeout_s: float, what: str, rig: Rig) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; worker log tail:\n{rig.log_tail()}")


QUESTION = "How do I connect to the VPN?"


def _answered(texts: list[str]) -> bool:
    return any("[1]" in text for text in texts)


async def test_kill_9_mid_stream_then_restart_recovers_state_and_answers_once(kafka, tmp_path):
    """Users switch to Spanish, then a stream of greetings and questions is cut
    by kill -9; after the restart every greeting comes in Spanish (state recovered from the
    changelog), every question is answered, nobody gets a reply twice."""
    # memory store: with RocksDB the egress's sent-ids changelog fails Faust's recovery
    # consistency check after a kill -9 (open bug, see the issue notes)
    rig = Rig(kafka, tmp_path)
    await rig.start()
    try:
        users = [f"1555{i:07d}" for i in range(40)]
        worker, port = rig.spawn("w1")
        await rig.wait_ready(port)
        await rig.produce([(u, "/lang es") for u in users])

        async def all_acked() -> bool:
            return all(rig.texts_to(u) for u in users)

        await _until(all_acked, 90, "the /lang acknowledgements", rig)
        rig.sim_state.faults = Faults(latency_ms=30)  # keep sends in flight at the kill
        await rig.produce([(u, m) for u in users for m in ("hola", QUESTION)])

        async def some_answered() -> bool:
            return sum(_answered(rig.texts_to(u)) for u in users) >= 5

        await _until(some_answered, 90, "the first answers", rig)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        at_kill = sum(_answered(rig.texts_to(u)) for u in users)
        assert at_kill < len(users), "every question was answered before the kill: nothing tested"
        rig.sim_state.faults = Faults()

        _, port = rig.spawn("w1")  # state comes back from the changelog topics
        await rig.wait_ready(port)

        async def all_accounted() -> bool:
            surfaced = await rig.uncertain()
            return all(_answered(rig.texts_to(u)) or u in surfaced for u in users)

        await _until(all_accounted, 150, "every question answered or surfaced", rig)
        await asyncio.sleep(2)  # a late duplicate would show up now
        assert rig.duplicates() == []
        surfaced = await rig.uncertain()
        greetings = {
            u: [x for x in rig.texts_to(u) if x.startswith(("¡Hola", "Hello"))] for u in users
        }
        for user in users:
            if user in surfaced:
                continue  # its greeting or answer was the uncertain send
            assert greetings[user] and all(g.startswith("¡Hola") for g in greetings[user]), (
                user,
                rig.texts_to(user),
            )
    finally:
        await rig.stop()


async def test_two_workers_share_the_work_through_rebalances(kafka, tmp_path):
    """A second worker joins mid-stream and takes partitions; the first then leaves (SIGTERM)
    mid-stream and the second takes everything: all questions answered once."""
    rig = Rig(kafka, tmp_path)
    await rig.start()
    try:
        first_users = [f"1666{i:07d}" for i in range(30)]
        later_users = [f"1777{i:07d}" for i in range(30)]
        a, port_a = rig.spawn("a")
        await rig.wait_ready(port_a)
        rig.sim_state.faults = Faults(latency_ms=20)
        await rig.produce([(u, QUESTION) for u in first_users])
        b, port_b = rig.spawn("b")  # joins while A is answering: a rebalance mid-stream
        await rig.wait_ready(port_b, timeout_s=120)
        await rig.produce([(u, QUESTION) for u in later_users])

        async def half_done() -> bool:
            return sum(_answered(rig.texts_to(u)) for u in later_users) >= 5

        await _until(half_done, 120, "answers after the join", rig)
        a_events = await rig.metric(port_a, "onyx_wa_stage_events_total", stage="preprocess")
        a.send_signal(signal.SIGTERM)  # a graceful leave: B takes A's partitions
        # off the event loop: it serves the simulator, which A's last sends are waiting for
        # (a blocking wait here held A's drain for its whole ``send_drain_s``)
        await asyncio.to_thread(a.wait, 60)
        everyone = first_users + later_users

        async def all_answered() -> bool:
            surfaced = await rig.uncertain()
            return all(_answered(rig.texts_to(u)) or u in surfaced for u in everyone)

        await _until(all_answered, 150, "every question answered", rig)
        await asyncio.sleep(2)
        assert rig.duplicates() == []
        # sends in flight when A stopped may be surfaced as uncertain (never resent): allowed
        b_events = await rig.metric(port_b, "onyx_wa_stage_events_total", stage="preprocess")
        assert a_events > 0 and b_events > 0, (a_events, b_events)  # both did real work
        b_conv = await rig.metric(port_b, "onyx_wa_stage_events_total", stage="conversation")
        assert b_conv > 0
    finally:
        await rig.stop()
