"""The services behind ``onyx-wa broker | ingress | sim | up``, and the embedded stack.

Why child processes for ``up``: the worker, the ingress and the simulator each get their own
interpreter (two cores are used, a slow stage cannot starve the ingress's 250 ms budget), exactly
as they run in production. Every child asks the kernel to be killed with its parent, so a killed
``onyx-wa up`` leaves nothing behind; a normal stop sends SIGTERM and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from onyx_wa.broker import EmbeddedBroker, port_is_free
from onyx_wa.kafka import ensure_pipeline_topics, wait_for_broker
from onyx_wa.runtime import StartupError, wait_stop
from onyx_wa.settings import Settings, settings_env


async def serve_broker(settings: Settings, stop: asyncio.Event, *, create_topics: bool) -> None:
    """``onyx-wa broker``: Tansu until Ctrl-C / SIGTERM."""
    broker = EmbeddedBroker(settings.broker_host, settings.broker_port)
    await broker.start()
    try:
        if create_topics:
            topics = await ensure_pipeline_topics(settings)
            print(
                f"broker ready on {broker.bootstrap_servers}: {len(topics)} topics with "
                f"{settings.partitions} partitions (memory only; Ctrl-C to stop)",
                flush=True,
            )
        else:
            print(f"broker ready on {broker.bootstrap_servers}", flush=True)
        await stop.wait()
    finally:
        broker.stop()


async def serve_ingress(settings: Settings, stop: asyncio.Event) -> None:
    from ingress.app import run_ingress

    await wait_for_broker(settings.bootstrap_servers, timeout_s=10)
    task = asyncio.ensure_future(run_ingress(settings))
    try:
        await wait_stop(stop, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def serve_sim(settings: Settings, stop: asyncio.Event, *, onyx_port: int | None) -> None:
    from sim.whatsapp import run_sim

    tasks = [asyncio.ensure_future(run_sim(settings.ingress_host, settings.sim_port))]
    if onyx_port:
        from sim.onyx import run_fake_onyx

        tasks.append(asyncio.ensure_future(run_fake_onyx(settings.ingress_host, onyx_port)))
    try:
        await wait_stop(stop, *tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- the embedded stack -------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    os.setpgrp()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


# how often ``up`` restarts a worker that exited before it gives up and stops the stack
MAX_WORKER_RESTARTS = 5


@dataclass
class Child:
    name: str
    args: list[str]
    health_url: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        log = open(log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "onyx_wa.cli", *self.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        finally:
            log.close()

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class EmbeddedStack:
    """Broker + migrations + worker + ingress + simulator (+ admin when present)."""

    settings: Settings
    children: list[Child] = field(default_factory=list)
    broker: EmbeddedBroker | None = None
    env: dict[str, str] = field(default_factory=dict)  # the children's environment

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    def _ports(self) -> dict[str, int]:
        s = self.settings
        ports = {
            "ONYX_WA_INGRESS_PORT": s.ingress_port,
            "ONYX_WA_SIM_PORT": s.sim_port,
            "ONYX_WA_WORKER_WEB_PORT": s.worker_web_port,
        }
        if s.embedded:
            ports["ONYX_WA_BROKER_PORT"] = s.broker_port
        return ports

    def check_ports(self) -> None:
        for env_name, port in self._ports().items():
            if port and not port_is_free(self.settings.ingress_host, port):
                raise StartupError(
                    f"port {port} is already in use: stop the process using it (another "
                    f"`onyx-wa up`?) or set {env_name} to a free port"
                )

    async def start(
        self,
        *,
        say: bool = True,
        before_children: Callable[[Settings], Awaitable[None]] | None = None,
    ) -> None:
        s = self.settings
        self.check_ports()  # before anything starts: nothing half-started
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        from store.crypto import resolve_encryption_key
        from store.migrate import upgrade

        resolve_encryption_key(s)
        if s.database_url is None:
            s.data_dir.mkdir(parents=True, exist_ok=True)
        from store.db import check_database

        await check_database(s.sqlalchemy_url)
        await asyncio.to_thread(upgrade, s.sqlalchemy_url)
        if s.embedded:
            self.broker = EmbeddedBroker(
                s.broker_host, s.broker_port, log_path=self.log_dir / "broker.log"
            )
            await self.broker.start()
        try:
            await wait_for_broker(s.bootstrap_servers, timeout_s=10)
            await ensure_pipeline_topics(s)
            if before_children is not None:
                await before_children(s)
        except BaseException:
            self.stop()
            raise
        env = {**os.environ, **settings_env(s)}
        for alias, value in (
            ("KAFKA_BOOTSTRAP_SERVERS", s.kafka_bootstrap_servers),
            ("DATABASE_URL", s.database_url),
            ("ONYX_WA_ENCRYPTION_KEY", s.encryption_key),
            ("ONYX_WA_GRAPH_API_URL", s.graph_api_url),
        ):
            if value is None:
                env.pop(alias, None)  # unset here means unset in the children too
        self.env = env
        host = s.ingress_host
        self.children = [
            Child("worker", ["worker"], f"http://{host}:{s.worker_web_port}/readyz"),
            Child("ingress", ["ingress"], f"http://{host}:{s.ingress_port}/healthz"),
            Child("sim", ["sim"], f"http://{host}:{s.sim_port}/healthz"),
        ]
        try:
            for child in self.children:
                child.start(env, self.log_dir)
            await self._wait_healthy(timeout_s=90)
        except BaseException:
            self.stop()
            raise
        if say:
            print(
                f"onyx-wa up: ingress http://{host}:{s.ingress_port}/webhooks/whatsapp · "
                f"simulator http://{host}:{s.sim_port} · broker {s.bootstrap_servers} · "
                f"logs {self.log_dir}",
                flush=True,
            )

    async def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for child in self.children:
                while True:
                    if child.proc is None or child.proc.poll() is not None:
                        tail = _tail(self.log_dir / f"{child.name}.log")
                        raise StartupError(f"{child.name} exited at start: {tail}")
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        async with http.get(child.health_url) as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise StartupError(
                            f"{child.name} not healthy after {timeout_s:.0f} s; see "
                            f"{self.log_dir / (child.name + '.log')}"
                        )
                    await asyncio.sleep(0.2)

    def crashed(self) -> Child | None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                return child
        return None

    def restart(self, child: Child) -> None:
        child.stop()
        child.start(self.env, self.log_dir)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    meaningful = [line for line in text if line.strip()]
    return " | ".join(meaningful[-lines:]) if meaningful else "(empty log)"


async def serve_stack(settings: Settings, stop: asyncio.Event) -> None:
    stack = EmbeddedStack(settings)
    await stack.start()
    worker_restarts = 0
    try:
        while not stop.is_set():
            crashed = stack.crashed()
            if crashed is not None:
                log_file = stack.log_dir / f"{crashed.name}.log"
                if crashed.name == "worker" and worker_restarts < MAX_WORKER_RESTARTS:
                    # what a supervisor does for a deployed worker: a worker exits to redo its
                    # work from the last commit (streams/delivery_guard.py) or after a crash
                    worker_restarts += 1
                    print(
                        f"onyx-wa up: the worker exited ({_tail(log_file)}); restarting it "
                        f"({worker_restarts}/{MAX_WORKER_RESTARTS})",
                        flush=True,
                    )
                    stack.restart(crashed)
                    continue
                raise StartupError(f"{crashed.name} stopped unexpectedly: {_tail(log_file)}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        stack.stop()
        print("onyx-wa up: stopped", flush=True)
