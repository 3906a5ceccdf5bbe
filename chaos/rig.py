"""The system under chaos: every part as in production, each one killable on its own.

The broker (Tansu), the ingress and the workers are separate processes, started, stopped and
killed -9 here; the WhatsApp simulator and the fake Onyx run in this process, so a scenario can
inject faults and read what WhatsApp accepted directly. The simulator posts signed ``sent``/
``delivered``/``read`` statuses back to the ingress like Meta (which also echoes each send's
``biz_opaque_callback_data``: the egress reconciles a send a kill left uncertain from them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from onyx_wa.broker import EmbeddedBroker, free_port
from onyx_wa.prometheus_helpers import sum_samples
from onyx_wa.settings import Settings, load_settings, settings_env

BIG = 1_000_000_000


@dataclass
class ChaosBot:
    tenant_id: str
    phone_number_id: str
    app_secret: str


@dataclass
class Process:
    """One ``onyx-wa`` child process with its health URL and log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    health_url: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "onyx_wa.cli", *self.args],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like an OOM kill or a lost machine."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait (a graceful leave: the group rebalances at once).

        Waits without blocking the event loop: the simulator and fake Onyx live in this loop,
        and a worker shutting down still finishes its in-flight sends against them."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            await asyncio.to_thread(self.popen.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    async def ready(self, http: aiohttp.ClientSession, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                break
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(self.health_url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready; log tail:\n{self.log_tail()}")


@dataclass
class ChaosRig:
    """Broker, database, simulator, fake Onyx, ingress and workers in a temporary folder."""

    partitions: int = 4
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="onyx-wa-chaos-")))
    settings: Settings | None = None
    broker: EmbeddedBroker | None = None
    ingress: Process | None = None
    workers: dict[str, Process] = field(default_factory=dict)
    bots: dict[str, ChaosBot] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    sim_app: web.Application | None = None
    onyx_app: web.Application | None = None
    _runners: list[web.AppRunner] = field(default_factory=list)
    _env: dict[str, str] = field(default_factory=dict)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        from cryptography.fernet import Fernet

        from onyx_wa.kafka import ensure_pipeline_topics
        from store.migrate import upgrade

        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        broker_port, sim_port, onyx_port, ingress_port = (free_port() for _ in range(4))
        self.broker = EmbeddedBroker(port=broker_port, log_path=self.data_dir / "broker.log")
        await self.broker.start()
        self.settings = load_settings(
            kafka_bootstrap_servers=self.broker.bootstrap_servers, broker_flavor="tansu",
            data_dir=self.data_dir,
            partitions=self.partitions, encryption_key=Fernet.generate_key().decode(),
            graph_api_url=f"http://127.0.0.1:{sim_port}", ingress_port=ingress_port,
            sim_port=sim_port, log_level="WARNING", kafka_session_timeout_s=6,
            tenant_flood_ceiling_per_s=1e9, user_questions_per_minute=BIG,
            tenant_questions_per_minute=BIG, tenant_questions_per_day=BIG, bot_cache_ttl_s=1.0,
            # failures show up within a scenario: a stalled Onyx answer times out after 2 s
            onyx_first_byte_timeout_s=2.0, onyx_total_timeout_s=6.0, onyx_max_retries=2,
            send_reconcile_s=8.0, pause_recheck_s=2.0,
        )  # fmt: skip
        await ensure_pipeline_topics(self.settings)
        await asyncio.to_thread(upgrade, self.settings.sqlalchemy_url)
        await self._add_bots(f"http://127.0.0.1:{onyx_port}")
        await self._serve_fakes(sim_port, onyx_port)
        self._env = {**os.environ, **settings_env(self.settings)}
        self._env["DATABASE_URL"] = self.settings.sqlalchemy_url
        self.ingress = Process(
            "ingress", ["ingress"], self._env,
            f"http://127.0.0.1:{ingress_port}/healthz", self.data_dir / "ingress.log",
        )  # fmt: skip
        self.ingress.start()
        await self.ingress.ready(self.http)
        await self.start_worker("worker-1")

    async def _add_bots(self, onyx_url: str) -> None:
        from onyx_wa.bots import add_bot

        assert self.settings is not None
        for name, backend in (("local", "local"), ("onyx", "onyx")):
            bot = ChaosBot(
                f"chaos-{name}", str(uuid.uuid4().int)[:15], f"secret-{uuid.uuid4().hex}"
            )
            extra = (
                {"onyx_base_url": onyx_url, "onyx_api_key": "chaos-key"} if name == "onyx" else {}
            )
            await add_bot(
                self.settings, tenant_id=bot.tenant_id, phone_number_id=bot.phone_number_id,
                app_secret=bot.app_secret, verify_token="v", access_token=f"token-{name}",
                answer_backend=backend, throughput_per_s=1000, user_questions_per_minute=BIG,
                tenant_questions_per_minute=BIG, tenant_questions_per_day=BIG, **extra,
            )  # fmt: skip
            self.bots[name] = bot

    async def _serve_fakes(self, sim_port: int, onyx_port: int) -> None:
        from sim.onyx import build_fake_onyx_app
        from sim.spec import load_validator
        from sim.whatsapp import SIM_KEY, build_sim_app

        assert self.settings is not None
        self.sim_app = build_sim_app(
            validator=load_validator(), webhook_url=self.settings.ingress_url,
            app_secrets={b.phone_number_id: b.app_secret for b in self.bots.values()},
            emit_statuses=True,
        )  # fmt: skip
        for bot in self.bots.values():
            self.sim_app[SIM_KEY].number_rates[bot.phone_number_id] = 1000.0
        self.onyx_app = build_fake_onyx_app()
        for app, port in ((self.sim_app, sim_port), (self.onyx_app, onyx_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)

    async def start_worker(self, name: str) -> Process:
        """A worker process with every role, its own web port and Faust data dir."""
        assert self.http is not None
        port = free_port()
        env = {
            **self._env,
            "ONYX_WA_WORKER_WEB_PORT": str(port),
            "ONYX_WA_DATA_DIR": str(self.data_dir / name),
        }
        worker = Process(
            name, ["worker"], env, f"http://127.0.0.1:{port}/readyz", self.data_dir / f"{name}.log"
        )
        self.workers[name] = worker
        worker.start()
        await worker.ready(self.http)
        return worker

    async def restart_ingress(self, down_s: float) -> None:
        assert self.ingress is not None and self.http is not None
        self.ingress.kill()
        await asyncio.sleep(down_s)
        self.ingress.start()
        await self.ingress.ready(self.http)

    def stop_broker(self) -> None:
        assert self.broker is not None
        self.broker.stop()

    async def start_broker_again(self) -> None:
        """The same port, empty (Tansu keeps nothing): the topics are created again."""
        from onyx_wa.kafka import ensure_pipeline_topics

        assert self.broker is not None and self.settings is not None
        self.broker = EmbeddedBroker(port=self.broker.port, log_path=self.data_dir / "broker.log")
        await self.broker.start()
        await ensure_pipeline_topics(self.settings)

    async def stop(self) -> None:
        for worker in self.workers.values():
            worker.kill()
        if self.ingress is not None:
            self.ingress.kill()
        for runner in self._runners:
            await runner.cleanup()
        if self.broker is not None:
            self.broker.stop()
        if self.http is not None:
            await self.http.close()

    # --- what WhatsApp and Onyx saw ----------------------------------------------------------

    @property
    def sim(self) -> Any:
        from sim.whatsapp import SIM_KEY

        assert self.sim_app is not None
        return self.sim_app[SIM_KEY]

    @property
    def onyx(self) -> Any:
        from sim.onyx import STATE

        assert self.onyx_app is not None
        return self.onyx_app[STATE]

    async def metric(self, name: str, **labels: str) -> float:
        """A Prometheus counter summed over the running workers (each one's own registry)."""
        assert self.http is not None
        total = 0.0
        for worker in self.workers.values():
            if not worker.running():
                continue
            url = worker.health_url.replace("/readyz", "/metrics")
            async with self.http.get(url) as resp:
                total += sum_samples(await resp.text(), name, **labels)
        return total

    def reset_fakes(self) -> None:
        from sim.whatsapp import DEFAULT_STATUS_DELAYS_S, Faults

        self.sim.faults = Faults()
        self.sim.status_delays_s = DEFAULT_STATUS_DELAYS_S
        self.onyx.fault = None
        self.onyx.requests.clear()
        self.sim.messages.clear()
        self.sim.statuses.clear()

    def worker_log_count(self, text: str) -> int:
        """Occurrences of ``text`` in the workers' log files (appended to across restarts)."""
        count = 0
        for worker in self.workers.values():
            with contextlib.suppress(FileNotFoundError):
                count += worker.log_path.read_text(errors="replace").count(text)
        return count

    def logs(self) -> str:
        parts = [p.log_tail(1500) for p in [self.ingress, *self.workers.values()] if p]
        return "\n---\n".join(parts)
