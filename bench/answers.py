"""Answers benchmark: answer requests → answer stage → fake Onyx (1 s) → answer results.

The issue's goal: with the fake Onyx answering after 1 s, 500 conversations at once finish in
under 5 s on one worker (the stage really runs them concurrently), and the pipeline's own
overhead on top of the Onyx latency is under 100 ms at the median.

What runs, all on this machine at once:

- the fake Onyx (``onyx-wa sim --onyx-port``) in its own process, with a latency fault on
  ``send-chat-message`` (``POST /_fake/faults {"latency_s": 1.0}``);
- the embedded broker and one answers worker (``onyx-wa worker --role answers``, its own
  process), with ``tenants`` bots configured ``answer_backend="onyx"`` pointing at the fake,
  each with its own API key;
- this process: the load generator and the result sink, and the **baseline**: the same
  questions sent directly with :class:`answers.onyx_client.OnyxClientPool` (no Kafka), same
  fake, same latency, same tenants and keys.

Per-tenant bound: the stage runs at most ``answer_concurrency_per_tenant`` (default 32) answers
at once per tenant, so 500 conversations of one tenant need ≈ 500 / 32 × 1 s ≈ 16 s by design.
The goal is per *worker*, so by default the 500 conversations are spread over 20 tenants × 25
conversations (each tenant below its bound). ``ONYX_WA_BENCH_ANSWERS_SINGLE_TENANT=1`` adds a
round with all 500 in one tenant, to show the bound at work.

Timing: the worker is waited for (``/readyz``: group joined, partitions assigned) and both paths
are warmed up (one request per tenant: bot lookup, Onyx client creation, first connection)
before anything is timed; direct and pipeline rounds then alternate, so both see the same
background load. Per-request pipeline latency = the answer result's broker timestamp − the
moment the request was handed to the producer; wall time = last result − first request. The
direct baseline's latency is the ``OnyxClient.answer`` call time. Overhead = pipeline median −
direct median. Every answer must come back ``ok`` (a failure is fast and would flatter the
figures). A light-load round (one conversation per tenant) shows the overhead without queueing,
and each pipeline round splits its median into ``to_backend`` (produce → the worker starts the
Onyx call), ``backend`` (the call as the worker timed it) and ``to_result``; CPU ms per answer
of the fake Onyx, the worker and this process are reported per round (from ``/proc``).

Knobs (arguments of :func:`run`, or environment variables for ``onyx-wa bench answers``):
``ONYX_WA_BENCH_ANSWERS_N`` (conversations per round, 500), ``..._TENANTS`` (20),
``..._LATENCY_S`` (fake Onyx latency, 1.0), ``..._ROUNDS`` (timed rounds, figures are medians
over rounds, 3), ``..._SINGLE_TENANT`` (0/1), ``..._PARTITIONS`` (8).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.ingress import wait_http
from bench.stats import percentile
from onyx_wa import topics as t
from onyx_wa.broker import free_port

QUESTION = "How many vacation days do full-time employees get? (conversation {i})"
GOALS = {"wall_s": 5.0, "overhead_p50_ms": 100.0}


@dataclass
class Config:
    n: int
    tenants: int
    latency_s: float
    rounds: int
    single_tenant: bool
    partitions: int


def _env(name: str, default: Any) -> str:
    return os.environ.get(f"ONYX_WA_BENCH_ANSWERS_{name}", str(default))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# --- the workload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    phone_number_id: str
    api_key: str


@dataclass(frozen=True)
class Conversation:
    tenant: Tenant
    chat_id: str
    question: str

    @property
    def key(self) -> bytes:
        return f"{self.tenant.tenant_id}:{self.chat_id}".encode()


class Chats:
    """Distinct chat ids across the whole run: every request starts a new conversation."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, tenants: list[Tenant], per_tenant: int) -> list[Conversation]:
        out = []
        # interleave tenants, as real traffic would arrive
        for _ in range(per_tenant):
            for tenant in tenants:
                i, self.next = self.next, self.next + 1
                out.append(Conversation(tenant, f"3{i:011d}", QUESTION.format(i=i)))
        return out


def answer_request(conv: Conversation) -> dict[str, Any]:
    """An AnswerRequest as the conversation stage builds it for a new 1:1 conversation."""
    now = int(time.time() * 1000)
    return {
        "request_id": f"{conv.tenant.tenant_id}:wamid.bench{uuid.uuid4().hex}",
        "tenant_id": conv.tenant.tenant_id,
        "phone_number_id": conv.tenant.phone_number_id,
        "chat_id": conv.chat_id,
        "chat_type": "direct",
        "recipient": conv.chat_id,
        "recipient_kind": "phone",
        "question_message_id": f"wamid.bench{uuid.uuid4().hex}",
        "sender_id": conv.chat_id,
        "question": conv.question,
        "history": [],
        "answer_backend": "onyx",
        "onyx_chat_session_id": None,
        "onyx_parent_message_id": None,
        "persona_id": None,
        "document_sets": [],
        "source_types": [],
        "tags": [],
        "time_cutoff_days": None,
        "linked_user_email": None,
        "language": "en",
        "show_sources": True,
        "created_at": now,
    }


def _epoch_s(value: Any) -> float:
    """A timestamp-millis field as decoded (int ms or datetime) → epoch seconds."""
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value) / 1000


def _summary(latencies: list[float], wall: float, failed: int) -> dict[str, Any]:
    return {
        "requests": len(latencies) + failed,
        "failed": failed,
        "wall_s": round(wall, 3),
        "latency_p50_ms": _ms(percentile(latencies, 0.5)),
        "latency_p95_ms": _ms(percentile(latencies, 0.95)),
        "latency_max_ms": _ms(max(latencies)) if latencies else float("nan"),
    }


# --- baseline: the same questions straight through the Onyx client ------------------------------


async def direct_round(pool: Any, onyx_url: str, convs: list[Conversation]) -> dict[str, Any]:
    """All of ``convs`` at once through ``OnyxClientPool`` (one client per tenant's key)."""

    async def one(conv: Conversation) -> tuple[float, bool]:
        client = pool.get(conv.tenant.tenant_id, onyx_url, conv.tenant.api_key)
        started = time.perf_counter()
        answer = await client.answer(
            conv.question, history=[], session_id=None, persona_id=None, document_sets=[],
            filters={},
        )  # fmt: skip
        return time.perf_counter() - started, answer.error is None

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(c) for c in convs))
    wall = time.perf_counter() - started
    latencies = [lat for lat, ok in outcomes if ok]
    return _summary(latencies, wall, sum(1 for _, ok in outcomes if not ok))


# --- pipeline: produce requests, read results ---------------------------------------------------


@dataclass
class ResultSink:
    """Reads the answer results topic; remembers each key's broker timestamp and status."""

    settings: Any
    topic: str
    #: key → (broker timestamp s, status, error, worker's finished_at s, backend latency s)
    arrived: dict[bytes, tuple[float, str, str | None, float, float]] = field(default_factory=dict)
    _event: asyncio.Event = field(default_factory=asyncio.Event)
    _waiting: set[bytes] = field(default_factory=set)
    _task: asyncio.Task | None = None
    _consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        await self._consumer.start()
        self._consumer.assign(
            [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
        )
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        from schemas.codec import get_codec

        codec = get_codec()
        while True:
            batches = await self._consumer.getmany(timeout_ms=20, max_records=5_000)
            now = time.time()
            for records in batches.values():
                for record in records:
                    stamp = (
                        record.timestamp / 1000
                        if record.timestamp and record.timestamp > 0
                        else now
                    )
                    value = codec.decode(record.value)
                    self.arrived.setdefault(
                        record.key,
                        (
                            stamp,
                            value["status"],
                            value.get("error_message"),
                            _epoch_s(value["finished_at"]),
                            value["latency_ms"] / 1000,
                        ),
                    )
                    self._waiting.discard(record.key)
            if not self._waiting:
                self._event.set()

    async def wait_for(self, keys: list[bytes], timeout_s: float) -> None:
        self._waiting = {k for k in keys if k not in self.arrived}
        self._event.clear()
        if not self._waiting:
            return
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except TimeoutError:
            raise RuntimeError(
                f"{len(self._waiting)} of {len(keys)} answers did not reach {self.topic} "
                f"within {timeout_s:.0f} s"
            ) from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


async def pipeline_round(
    producer: Any, sink: ResultSink, topic: str, convs: list[Conversation], timeout_s: float
) -> dict[str, Any]:
    """Produce one request per conversation as fast as possible; wall time and latencies."""
    from schemas.codec import get_codec

    codec = get_codec()
    encoded = [(codec.encode("AnswerRequest", answer_request(c)), c.key) for c in convs]
    sent: list[float] = []
    for value, key in encoded:
        sent.append(time.time())
        await producer.send(topic, value, key=key)
    await producer.flush()
    keys = [key for _, key in encoded]
    await sink.wait_for(keys, timeout_s)
    latencies, failed, errors = [], 0, []
    before, backend, after = [], [], []
    for key, at in zip(keys, sent, strict=True):
        stamp, status, error, finished, answer_s = sink.arrived[key]
        if status == "ok":
            latencies.append(stamp - at)
            before.append(finished - answer_s - at)
            backend.append(answer_s)
            after.append(stamp - finished)
        else:
            failed += 1
            errors.append(error)
    wall = max(sink.arrived[k][0] for k in keys) - sent[0]
    out = _summary(latencies, wall, failed)
    # where the time goes (medians): produce → backend call starts (Kafka hop, consume, bot
    # lookup, tenant slot), the backend call as the worker timed it, result → broker
    out["breakdown_p50_ms"] = {
        "to_backend_min": _ms(min(before)) if before else float("nan"),
        "to_backend": _ms(percentile(before, 0.5)),
        "backend": _ms(percentile(backend, 0.5)),
        "to_result": _ms(percentile(after, 0.5)),
    }
    if errors:
        out["first_error"] = errors[0]
    return out


# --- processes ----------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


async def _control(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> None:
    async with http.request(method, url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status} {await resp.text()}")


# --- the benchmark ------------------------------------------------------------------------------


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall_s", "latency_p50_ms", "latency_p95_ms", "latency_max_ms")
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys}
    out["failed"] = sum(r["failed"] for r in rounds)
    out["requests"] = rounds[0]["requests"]
    cpu = rounds[0].get("cpu_ms_per_answer", {})
    out["cpu_ms_per_answer"] = {
        name: round(statistics.median(r["cpu_ms_per_answer"][name] for r in rounds), 2)
        for name in cpu
    }
    return out


async def _run(cfg: Config) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    from answers.onyx_client import OnyxClientPool
    from bench.streams import Child
    from onyx_wa.bots import add_bot
    from onyx_wa.broker import EmbeddedBroker
    from onyx_wa.kafka import ensure_pipeline_topics, start_producer
    from onyx_wa.settings import load_settings, settings_env
    from store.migrate import upgrade

    data = Path(tempfile.mkdtemp(prefix="onyx-wa-bench-answers-"))
    broker = EmbeddedBroker(port=free_port())
    await broker.start()
    onyx_port, worker_port = free_port(), free_port()
    settings = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu", data_dir=data,
        partitions=cfg.partitions, encryption_key=Fernet.generate_key().decode(),
        log_level="WARNING", kafka_session_timeout_s=6, sim_port=free_port(),
        worker_web_port=worker_port, ingress_host="127.0.0.1",
    )  # fmt: skip
    env = {**os.environ, **settings_env(settings)}
    onyx_url = f"http://127.0.0.1:{onyx_port}"
    onyx = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "onyx_wa.cli", "sim", "--onyx-port", str(onyx_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(data / "sim.log").open("wb"),
    )
    per_tenant = max(1, cfg.n // cfg.tenants)
    results: dict[str, Any] = {
        "config": {
            "conversations": per_tenant * cfg.tenants, "tenants": cfg.tenants,
            "conversations_per_tenant": per_tenant, "onyx_latency_s": cfg.latency_s,
            "rounds": cfg.rounds, "partitions": cfg.partitions,
            "answer_concurrency_per_tenant": settings.answer_concurrency_per_tenant,
        },
    }  # fmt: skip
    worker: Any = None
    producer: Any = None
    sink: ResultSink | None = None
    pool = OnyxClientPool(
        connect_timeout_s=settings.onyx_connect_timeout_s,
        first_byte_timeout_s=settings.onyx_first_byte_timeout_s,
        total_timeout_s=settings.onyx_total_timeout_s,
        max_retries=settings.onyx_max_retries,
    )
    try:
        await wait_http(f"{onyx_url}/_fake/requests")
        await ensure_pipeline_topics(settings)
        await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
        tenants = [
            Tenant(f"benchans{j:02d}", str(uuid.uuid4().int)[:15], f"onyx-key-{j}-{uuid.uuid4()}")
            for j in range(cfg.tenants)
        ]
        single = Tenant("benchanssolo", str(uuid.uuid4().int)[:15], f"onyx-key-solo-{uuid.uuid4()}")
        for tenant in [*tenants, single]:
            await add_bot(
                settings, tenant_id=tenant.tenant_id, phone_number_id=tenant.phone_number_id,
                app_secret="s", verify_token="v", access_token="a", answer_backend="onyx",
                onyx_base_url=onyx_url, onyx_api_key=tenant.api_key,
            )  # fmt: skip
        async with aiohttp.ClientSession() as http:
            await _control(
                http, "POST", f"{onyx_url}/_fake/faults",
                {"latency_s": cfg.latency_s, "paths": ["/api/chat/send-chat-message"]},
            )  # fmt: skip
            worker = Child(
                "answers worker",
                [sys.executable, "-m", "onyx_wa.cli", "worker", "--role", "answers"],
                env,
                worker_port,
                data / "worker.log",
            )
            started = time.perf_counter()
            await worker.start()  # returns once /readyz says joined and assigned
            results["worker_ready_s"] = round(time.perf_counter() - started, 1)
            assert worker.proc is not None
            producer = await start_producer(settings)
            requests_topic = t.full_name(t.ANSWER_REQUESTS, settings.topic_prefix)
            sink = ResultSink(settings, t.full_name(t.ANSWER_RESULTS, settings.topic_prefix))
            await sink.start()
            timeout = 60 + cfg.n * cfg.latency_s / 8
            chats = Chats()
            every = [*tenants, single]
            # warm-up both paths: bot lookups, Onyx clients, first connections
            await direct_round(pool, onyx_url, chats.take(every, 1))
            warm = await pipeline_round(
                producer, sink, requests_topic, chats.take(every, 1), timeout
            )
            if warm["failed"]:
                raise RuntimeError(f"warm-up answers failed: {warm.get('first_error')}")
            pids = {"fake_onyx": onyx.pid, "worker": worker.proc.pid}

            async def measured(path: str, per: int, who: list[Tenant]) -> dict[str, Any]:
                """One round; adds CPU seconds per answer of each process involved."""
                convs = chats.take(who, per)
                before = {name: cpu_s(pid) for name, pid in pids.items()}
                before_self = time.process_time()
                if path == "direct":
                    out = await direct_round(pool, onyx_url, convs)
                else:
                    out = await pipeline_round(producer, sink, requests_topic, convs, timeout)
                cpu = {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
                cpu["bench"] = time.process_time() - before_self
                out["cpu_ms_per_answer"] = {
                    k: round(v * 1000 / len(convs), 2) for k, v in cpu.items()
                }
                await _control(http, "DELETE", f"{onyx_url}/_fake/requests")
                await asyncio.sleep(0.5)  # let the fake and the worker settle between rounds
                return out

            # direct and pipeline rounds alternate, so both see the same background load
            rounds: dict[str, list[dict[str, Any]]] = {
                "direct": [], "pipeline": [], "direct_light": [], "pipeline_light": []
            }  # fmt: skip
            for _ in range(cfg.rounds):
                rounds["direct"].append(await measured("direct", per_tenant, tenants))
                rounds["pipeline"].append(await measured("pipeline", per_tenant, tenants))
            for _ in range(cfg.rounds):
                rounds["direct_light"].append(await measured("direct", 1, tenants))
                rounds["pipeline_light"].append(await measured("pipeline", 1, tenants))
            for name, done in rounds.items():
                results[name] = {**_median_of(done), "rounds": done}
            if cfg.single_tenant:
                results["direct_single_tenant"] = await measured("direct", cfg.n, [single])
                results["pipeline_single_tenant"] = await measured("pipeline", cfg.n, [single])
            worker_rss = worker.rss()
        results["worker_rss_mb"] = worker_rss
        direct_p50 = results["direct"]["latency_p50_ms"]
        pipe_p50 = results["pipeline"]["latency_p50_ms"]
        results["overhead_p50_ms"] = round(pipe_p50 - direct_p50, 1)
        results["overhead_p95_ms"] = round(
            results["pipeline"]["latency_p95_ms"] - results["direct"]["latency_p95_ms"], 1
        )
        results["ratio_latency_p50"] = round(pipe_p50 / direct_p50, 3)
        results["ratio_wall"] = round(
            results["pipeline"]["wall_s"] / results["direct"]["wall_s"], 3
        )
        results["overhead_light_p50_ms"] = round(
            results["pipeline_light"]["latency_p50_ms"] - results["direct_light"]["latency_p50_ms"],
            1,
        )
        results["meets_wall_goal"] = results["pipeline"]["wall_s"] < GOALS["wall_s"]
        results["meets_overhead_goal"] = results["overhead_p50_ms"] < GOALS["overhead_p50_ms"]
        _print_table(results)
        return results
    finally:
        if sink is not None:
            await sink.stop()
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        await pool.aclose()
        if worker is not None:
            worker.stop()
        _stop(onyx)
        broker.stop()


def _print_table(r: dict[str, Any]) -> None:
    c = r["config"]
    print(
        f"answers: {c['conversations']} conversations at once ({c['tenants']} tenants × "
        f"{c['conversations_per_tenant']}; per-tenant bound {c['answer_concurrency_per_tenant']}), "
        f"fake Onyx latency {c['onyx_latency_s']:.2f} s, median of {c['rounds']} rounds",
        flush=True,
    )
    print(
        f"{'':34} {'wall':>7} {'p50':>8} {'p95':>8} {'max':>8} {'failed':>6}   "
        "CPU ms/answer (fake Onyx, worker, bench)"
    )
    n, k = c["conversations"], c["tenants"]
    rows = [
        (f"direct, {n} at once", r["direct"]),
        (f"pipeline, {n} at once", r["pipeline"]),
        (f"direct, {k} at once (light)", r["direct_light"]),
        (f"pipeline, {k} at once (light)", r["pipeline_light"]),
    ]
    for name in ("direct", "pipeline"):
        if f"{name}_single_tenant" in r:
            row = r[f"{name}_single_tenant"]
            rows.append((f"{name}, 1 tenant × {row['requests']}", row))
    for name, row in rows:
        cpu = row.get("cpu_ms_per_answer", {})
        print(
            f"{name:34} {row['wall_s']:>6.2f}s {row['latency_p50_ms']:>6.0f}ms "
            f"{row['latency_p95_ms']:>6.0f}ms {row['latency_max_ms']:>6.0f}ms {row['failed']:>6}   "
            f"{cpu.get('fake_onyx', 0):.1f} / {cpu.get('worker', 0):.1f} / {cpu.get('bench', 0):.1f}"
        )
    wall_ok = "meets" if r["meets_wall_goal"] else "MISSES"
    over_ok = "meets" if r["meets_overhead_goal"] else "MISSES"
    print(
        f"pipeline wall {r['pipeline']['wall_s']:.2f} s for {n} ({wall_ok} the "
        f"< {GOALS['wall_s']:.0f} s goal); overhead p50 {r['overhead_p50_ms']:.0f} ms ({over_ok} "
        f"the < {GOALS['overhead_p50_ms']:.0f} ms goal), p95 {r['overhead_p95_ms']:.0f} ms, "
        f"light load p50 {r['overhead_light_p50_ms']:.0f} ms; ratio p50 "
        f"{r['ratio_latency_p50']:.3f}, wall {r['ratio_wall']:.2f}; "
        f"worker ready in {r['worker_ready_s']:.1f} s",
        flush=True,
    )


def run(
    n: int | None = None,
    tenants: int | None = None,
    *,
    latency_s: float | None = None,
    rounds: int | None = None,
    single_tenant: bool | None = None,
    partitions: int | None = None,
) -> dict[str, Any]:
    """Run the benchmark; arguments default to the ``ONYX_WA_BENCH_ANSWERS_*`` variables."""
    cfg = Config(
        n=n if n is not None else int(_env("N", 500)),
        tenants=tenants if tenants is not None else int(_env("TENANTS", 20)),
        latency_s=latency_s if latency_s is not None else float(_env("LATENCY_S", 1.0)),
        rounds=max(1, rounds if rounds is not None else int(_env("ROUNDS", 3))),
        single_tenant=single_tenant
        if single_tenant is not None
        else _env("SINGLE_TENANT", "0").lower() in ("1", "true", "yes"),
        partitions=partitions if partitions is not None else int(_env("PARTITIONS", 8)),
    )
    return asyncio.run(_run(cfg))


if __name__ == "__main__":  # pragma: no cover
    run()
