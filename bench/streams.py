"""Streams benchmark: raw webhook events → preprocess → classify → state → answer request.

What it measures, all in one run on this machine (embedded Tansu broker):

- **throughput**: a burst of ``n`` raw deliveries (one text question each, every one from a
  different user, so ``n`` new conversations) produced to the raw topic; events/s =
  ``n / (last answer request − first produce)``. The worker (``onyx-wa worker --role streams``)
  runs in its own process, so it never shares an event loop with the load generator, and its
  resident memory can be read from ``/proc``.
- **baseline**: a bare Faust app (``python -m bench.streams baseline``, also its own process)
  with two agents passing bytes raw → t1 → t2 — the same number of topic hops as raw → inbound
  → answer requests, the same partitions, broker and Faust settings — measured the same way
  with the same encoded records. The goal is a ratio pipeline/baseline ≥ 0.6.
- **like for like**: the worker's consumer hands records to its streams eagerly
  (``streams.eager_delivery``, a fix to Faust's drain loop that cut the worker's CPU per event
  by about a quarter). The baseline is stock Faust, as the goal defines it, so a second
  baseline app with the same fix runs beside it (``baseline --eager``), and the ratio against
  it says what this pipeline's own work costs, with Faust's cost equal on both sides. That
  baseline also tunes its garbage collector as a worker process does (``onyx_wa.gc_tuning``).
- **rounds**: both apps run side by side (an idle Faust app costs ~1.5% of a core) and their
  bursts alternate, baseline then pipeline, ``rounds`` times (default 3). Each round gives a
  paired ratio; the figures are the medians (throughput: the median round's; ratio: the median
  of the paired ratios), so one burst landing in a busy moment of this shared 2-core machine
  no longer decides the figure (single bursts moved 0.40–0.50 in one afternoon).
- **latency**: per-event latency at a fixed offered rate (open loop, from each event's
  *scheduled* send time to the answer request's broker timestamp), median and p95, for both.
  Latency during the burst is reported too, but it is mostly queueing behind the burst.
- **memory**: the worker's VmRSS idle (after start and a warm-up) and after every chunk of new
  conversations up to ``conversations`` (default 100,000), on the memory store and on RocksDB.
  Goals: < 400 MB (memory store) and < 200 MB (RocksDB) at 100,000 live conversations.

Both apps are waited for (``/readyz``: group joined, partitions assigned) before anything is
timed, and get a warm-up, so the ≈5 s Faust group join and first-use costs (database lookups,
quota leases) stay out of the timed windows.

Knobs (arguments of :func:`run`, or environment variables for ``onyx-wa bench streams``):
``ONYX_WA_BENCH_STREAMS_N`` (burst size, 10,000), ``..._ROUNDS`` (3), ``..._CONVERSATIONS``
(100,000), ``..._LATENCY_EVENTS`` (1,000), ``..._LATENCY_RATE`` (events/s, 200), ``..._STORES``
(``memory,rocksdb``; the first is the one paired with the baseline), ``..._CHUNK``
(conversations per memory step, 20,000).
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

from bench.stats import percentile
from onyx_wa import topics as t
from onyx_wa.broker import free_port

TENANT = "benchstreams"
QUESTION = "What is the refund policy for order {i} placed last week?"
BIG = 1_000_000_000  # quotas: high enough never to reject a benchmark question


# --- the workload -------------------------------------------------------------------------------


def raw_record(pnid: str, user: str, i: int) -> tuple[bytes, bytes]:
    """One encoded RawWebhook (one text question from ``user``) and its key (the delivery id)."""
    from schemas.codec import get_codec
    from sim import meta

    msg = meta.text_message(user, QUESTION.format(i=i))
    body = meta.serialise(meta.notification(pnid, messages=[msg], contacts=[meta.contact(user)]))
    delivery_id = str(uuid.uuid4())
    record = {
        "delivery_id": delivery_id,
        "received_at": int(time.time() * 1000),
        "body": body,
        "headers": {"Content-Type": "application/json"},
        "tenant_ids": [TENANT],
        "phone_number_ids": [pnid],
        "routed": True,
    }
    return get_codec().encode("RawWebhook", record), delivery_id.encode()


@dataclass
class Batch:
    """Events of one phase: what to send and which output key marks each one as done."""

    values: list[bytes]
    keys: list[bytes]  # the raw topic key (delivery id)
    done_keys: list[bytes]  # the key the event has on the last topic


def make_batch(pnid: str, users: range, *, pipeline: bool) -> Batch:
    values, keys, done = [], [], []
    for i in users:
        user = f"1{i:011d}"
        value, key = raw_record(pnid, user, i)
        values.append(value)
        keys.append(key)
        # the pipeline re-keys by tenant:chat (a 1:1 chat's id is the user), the baseline keeps it
        done.append(f"{TENANT}:{user}".encode() if pipeline else key)
    return Batch(values, keys, done)


# --- load generator and sink --------------------------------------------------------------------


@dataclass
class Sink:
    """Reads the last topic continuously; remembers each key's broker timestamp (ms)."""

    settings: Any
    topic: str
    arrived: dict[bytes, float] = field(default_factory=dict)
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
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await self._consumer.start()
        self._consumer.assign(
            [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
        )
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=50, max_records=10_000)
            now = time.time()
            for records in batches.values():
                for record in records:
                    # CreateTime, set when the stage produced it; local arrival if absent
                    stamp = (
                        record.timestamp / 1000
                        if record.timestamp and record.timestamp > 0
                        else now
                    )
                    self.arrived.setdefault(record.key, stamp)
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
                f"{len(self._waiting)} of {len(keys)} events did not reach {self.topic} "
                f"within {timeout_s:.0f} s"
            ) from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


async def burst(
    producer: Any, sink: Sink, topic: str, batch: Batch, pid: int | None = None
) -> dict[str, Any]:
    """Send every event as fast as the producer takes them; events/s, latency and, given the
    worker's ``pid``, its CPU time per event (CPU-bound when cpu_ms × events/s ≈ 1,000)."""
    cpu_before = cpu_seconds(pid) if pid else 0.0
    sent: list[float] = []
    first = time.time()
    for value, key in zip(batch.values, batch.keys, strict=True):
        sent.append(time.time())
        await producer.send(topic, value, key=key)
    await producer.flush()
    n = len(batch.values)
    await sink.wait_for(batch.done_keys, timeout_s=120 + n / 50)
    arrivals = [sink.arrived[k] for k in batch.done_keys]
    latencies = [a - s for a, s in zip(arrivals, sent, strict=True)]
    elapsed = max(arrivals) - first
    out = {
        "events": n,
        "seconds": round(elapsed, 2),
        "events_per_s": round(n / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
    }
    if pid:
        cpu = cpu_seconds(pid) - cpu_before
        out["worker_cpu_ms_per_event"] = round(cpu / n * 1000, 3)
        out["worker_cpu_share"] = round(cpu / elapsed, 2)  # 1.0 = one core busy throughout
    return out


async def paced(producer: Any, sink: Sink, topic: str, batch: Batch, rate: float) -> dict:
    """Open loop at ``rate`` events/s: latency from each event's scheduled send time."""
    scheduled: list[float] = []
    start = time.time() + 0.05
    for i, (value, key) in enumerate(zip(batch.values, batch.keys, strict=True)):
        at = start + i / rate
        delay = at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        scheduled.append(at)
        await producer.send(topic, value, key=key)
    await producer.flush()
    await sink.wait_for(batch.done_keys, timeout_s=60 + len(batch.values) / 50)
    latencies = [sink.arrived[k] - s for k, s in zip(batch.done_keys, scheduled, strict=True)]
    return {
        "events": len(latencies),
        "rate_per_s": rate,
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
        "latency_max_ms": round(max(latencies) * 1000, 1),
    }


# --- processes ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of ``pid`` in MB, from /proc (Linux)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = round(int(value.split()[0]) / 1024, 1)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, from /proc (Linux); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """A subprocess with a /readyz endpoint and a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None

    async def start(self) -> None:
        from bench.ingress import wait_http

        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=log)  # noqa: S603
        log.close()
        try:
            await wait_http(f"http://127.0.0.1:{self.port}/readyz", timeout_s=90)
        except RuntimeError:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"{self.name} did not become ready; log tail:\n{tail}") from None

    def rss(self) -> dict[str, float]:
        assert self.proc is not None
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _profiler(store: str) -> list[str]:
    """``ONYX_WA_BENCH_PROFILE=DIR`` runs the worker under cProfile (``DIR/worker-STORE.prof``)."""
    out = os.environ.get("ONYX_WA_BENCH_PROFILE")
    if not out:
        return []
    Path(out).mkdir(parents=True, exist_ok=True)
    return ["-m", "cProfile", "-o", str(Path(out) / f"worker-{store}.prof")]


# --- the benchmark ------------------------------------------------------------------------------


@dataclass
class Config:
    n: int
    conversations: int
    latency_events: int
    latency_rate: float
    stores: tuple[str, ...]
    chunk: int
    warmup: int = 200
    rounds: int = 3


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"ONYX_WA_BENCH_STREAMS_{name}", default))


class Users:
    """Distinct user numbers across the whole run: every event starts a new conversation."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, count: int) -> range:
        start, self.next = self.next, self.next + count
        return range(start, self.next)


@dataclass
class Contender:
    """One app under test: its process, the sink on its last topic, and where to send."""

    child: Child
    sink: Sink
    raw_topic: str
    pipeline: bool  # re-keys by tenant:chat (see make_batch)
    ready_s: float = 0.0
    stopped: bool = False

    @property
    def pid(self) -> int | None:
        return self.child.proc.pid if self.child.proc else None

    async def burst(self, producer: Any, pnid: str, users: range, *, cpu: bool = True) -> dict:
        batch = make_batch(pnid, users, pipeline=self.pipeline)
        return await burst(producer, self.sink, self.raw_topic, batch, self.pid if cpu else None)

    async def paced(self, producer: Any, pnid: str, users: range, rate: float) -> dict:
        batch = make_batch(pnid, users, pipeline=self.pipeline)
        return await paced(producer, self.sink, self.raw_topic, batch, rate)

    async def stop(self) -> None:
        """Idempotent: the baseline stops once its rounds are done and again on the way out."""
        if self.stopped:
            return
        self.stopped = True
        await self.sink.stop()
        self.child.stop()


async def _start(child: Child, settings: Any, last_topic: str, **kw: Any) -> Contender:
    started = time.perf_counter()
    await child.start()
    ready_s = time.perf_counter() - started
    sink = Sink(settings, last_topic)
    try:
        await sink.start()
    except BaseException:
        child.stop()
        raise
    return Contender(child, sink, ready_s=ready_s, **kw)


async def _start_baseline(base: Any, *, eager: bool = False) -> Contender:
    from onyx_wa.kafka import ensure_topics
    from onyx_wa.settings import settings_env

    prefix = "bench-baseline-eager" if eager else "bench-baseline"
    settings = base.model_copy(update={"topic_prefix": prefix})
    raw, t1, t2 = baseline_topics(settings)
    await ensure_topics(
        settings.bootstrap_servers, dict.fromkeys((raw, t1, t2), settings.partitions)
    )
    port = free_port()
    child = Child(
        "eager baseline" if eager else "baseline",
        [
            sys.executable, "-m", "bench.streams", "baseline", "--port", str(port),
            *(["--eager"] if eager else []),
        ],
        {**os.environ, **settings_env(settings)},
        port,
        settings.data_dir / f"{prefix}.log",
    )  # fmt: skip
    return await _start(child, settings, t2, raw_topic=raw, pipeline=False)


async def _start_pipeline(base: Any, store: str) -> Contender:
    from onyx_wa.settings import settings_env

    port = free_port()
    settings = base.model_copy(
        update={"topic_prefix": f"bench-{store}", "store": store, "worker_web_port": port}
    )
    child = Child(
        f"worker ({store} store)",
        [sys.executable, *_profiler(store), "-m", "onyx_wa.cli", "worker", "--role", "streams"],
        {**os.environ, **settings_env(settings)},
        port,
        settings.data_dir / f"worker-{store}.log",
    )
    last = t.full_name(t.ANSWER_REQUESTS, settings.topic_prefix)
    raw = t.full_name(t.RAW, settings.topic_prefix)
    return await _start(child, settings, last, raw_topic=raw, pipeline=True)


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median events/s (the lower middle one for an even count), with every
    round's events/s beside it."""
    ordered = sorted(rounds, key=lambda r: r["events_per_s"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["rounds_events_per_s"] = [r["events_per_s"] for r in rounds]
    return middle


@dataclass
class Paired:
    """Median rounds and per-round ratios of the pipeline against each baseline."""

    baseline: dict[str, Any]
    pipeline: dict[str, Any]
    ratios: list[float]
    twin: dict[str, Any] | None  # the eager baseline (like for like)
    twin_ratios: list[float]


async def _paired_rounds(
    cfg: Config,
    producer: Any,
    pnid: str,
    users: Users,
    baseline: Contender,
    pipe: Contender,
    twin: Contender | None = None,
) -> Paired:
    """Alternating bursts, baseline (then the eager baseline) then pipeline, ``cfg.rounds``
    times; the median rounds and the paired ratios."""
    base_rounds: list[dict[str, Any]] = []
    pipe_rounds: list[dict[str, Any]] = []
    twin_rounds: list[dict[str, Any]] = []
    for i in range(cfg.rounds):
        base_rounds.append(await baseline.burst(producer, pnid, users.take(cfg.n)))
        if twin is not None:
            twin_rounds.append(await twin.burst(producer, pnid, users.take(cfg.n)))
        pipe_rounds.append(await pipe.burst(producer, pnid, users.take(cfg.n)))
        pipe_rate = pipe_rounds[-1]["events_per_s"]
        line = (
            f"  round {i + 1}: baseline {base_rounds[-1]['events_per_s']:,.0f} events/s, "
            f"pipeline {pipe_rate:,.0f} events/s, "
            f"ratio {pipe_rate / base_rounds[-1]['events_per_s']:.2f}"
        )
        if twin is not None:
            twin_rate = twin_rounds[-1]["events_per_s"]
            line += f"; eager baseline {twin_rate:,.0f} events/s, ratio {pipe_rate / twin_rate:.2f}"
        print(line, flush=True)
    return Paired(
        median_round(base_rounds),
        median_round(pipe_rounds),
        _ratios(pipe_rounds, base_rounds),
        median_round(twin_rounds) if twin_rounds else None,
        _ratios(pipe_rounds, twin_rounds) if twin_rounds else [],
    )


def _ratios(pipe: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[float]:
    return [
        round(p["events_per_s"] / b["events_per_s"], 3) for b, p in zip(base, pipe, strict=True)
    ]


async def _fill(
    cfg: Config, producer: Any, pnid: str, users: Users, pipe: Contender, store: str, live: int
) -> dict[str, Any]:
    """New conversations in chunks up to ``cfg.conversations``: RSS after each chunk."""
    out: dict[str, Any] = {}
    steps = [{"conversations": live, **pipe.child.rss()}]
    fill_started = time.perf_counter()
    chunks = []
    while live < cfg.conversations:
        size = min(cfg.chunk, cfg.conversations - live)
        chunks.append(await pipe.burst(producer, pnid, users.take(size), cpu=False))
        live += size
        steps.append({"conversations": live, **pipe.child.rss()})
        print(
            f"  {store}: {live:,} conversations, {chunks[-1]['events_per_s']:,.0f} events/s, "
            f"RSS {steps[-1].get('VmRSS', 0):.0f} MB",
            flush=True,
        )
    out["fill_seconds"] = round(time.perf_counter() - fill_started, 1)
    if chunks:
        total = sum(c["events"] for c in chunks)
        out["fill_events_per_s"] = round(total / sum(c["seconds"] for c in chunks), 1)
    out["rss_steps"] = steps
    out["live_conversations"] = live
    out["rss_final_mb"] = pipe.child.rss()
    return out


async def _pipeline(
    cfg: Config,
    base: Any,
    producer: Any,
    pnid: str,
    users: Users,
    store: str,
    baseline: Contender | None = None,
    twin: Contender | None = None,
) -> dict[str, Any]:
    """One store's figures; with ``baseline`` (running), the paired rounds against it (and
    ``twin``, the eager baseline) and the baselines' own figures under ``"baseline"`` and
    ``"baseline_eager"``."""
    pipe = await _start_pipeline(base, store)
    try:
        out: dict[str, Any] = {"store": store, "ready_s": round(pipe.ready_s, 1)}
        await pipe.burst(producer, pnid, users.take(cfg.warmup), cpu=False)
        out["rss_idle_mb"] = pipe.child.rss()
        live = cfg.warmup
        if baseline is not None:
            await baseline.burst(producer, pnid, users.take(cfg.warmup), cpu=False)
            if twin is not None:
                await twin.burst(producer, pnid, users.take(cfg.warmup), cpu=False)
            paired = await _paired_rounds(cfg, producer, pnid, users, baseline, pipe, twin)
            out["throughput"] = paired.pipeline
            out["paired_ratios"] = paired.ratios
            out["baseline"] = {"throughput": paired.baseline}
            if twin is not None and paired.twin is not None:
                out["baseline_eager"] = {
                    "throughput": paired.twin,
                    "paired_ratios": paired.twin_ratios,
                    "rss_mb": twin.child.rss(),
                }
                await twin.stop()
            if cfg.latency_events:
                users_paced = users.take(cfg.latency_events)
                out["baseline"]["latency"] = await baseline.paced(
                    producer, pnid, users_paced, cfg.latency_rate
                )
            out["baseline"]["rss_mb"] = baseline.child.rss()
            await baseline.stop()  # the memory fill below runs alone
            live += cfg.rounds * cfg.n
        else:
            out["throughput"] = await pipe.burst(producer, pnid, users.take(cfg.n))
            live += cfg.n
        if cfg.latency_events:
            users_paced = users.take(cfg.latency_events)
            out["latency"] = await pipe.paced(producer, pnid, users_paced, cfg.latency_rate)
            live += cfg.latency_events
        out.update(await _fill(cfg, producer, pnid, users, pipe, store, live))
        idle = out["rss_idle_mb"].get("VmRSS", 0.0)
        grown = out["rss_final_mb"].get("VmRSS", 0.0) - idle
        live = out["live_conversations"]
        out["rss_per_10k_conversations_mb"] = round(grown / max(live - cfg.warmup, 1) * 10_000, 1)
        return out
    finally:
        await pipe.stop()


async def _run(cfg: Config) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    from onyx_wa.bots import add_bot
    from onyx_wa.broker import EmbeddedBroker
    from onyx_wa.kafka import start_producer
    from onyx_wa.settings import load_settings
    from store.migrate import upgrade

    data = Path(tempfile.mkdtemp(prefix="onyx-wa-bench-streams-"))
    broker = EmbeddedBroker(port=free_port())
    await broker.start()
    settings = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu", data_dir=data, partitions=8,
        encryption_key=Fernet.generate_key().decode(), log_level="WARNING",
        kafka_session_timeout_s=6, user_questions_per_minute=BIG,
        tenant_questions_per_minute=BIG, tenant_questions_per_day=BIG,
    )  # fmt: skip
    pnid = str(uuid.uuid4().int)[:15]
    results: dict[str, Any] = {
        "config": {
            "n": cfg.n, "conversations": cfg.conversations, "latency_events": cfg.latency_events,
            "latency_rate_per_s": cfg.latency_rate, "partitions": settings.partitions,
            "stores": list(cfg.stores), "rounds": cfg.rounds,
        },
    }  # fmt: skip
    producer = None
    try:
        await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
        await add_bot(
            settings, tenant_id=TENANT, phone_number_id=pnid, app_secret="s", verify_token="v",
            access_token="a", user_questions_per_minute=BIG, tenant_questions_per_minute=BIG,
            tenant_questions_per_day=BIG,
        )  # fmt: skip
        producer = await start_producer(settings)
        users = Users()
        baseline = await _start_baseline(settings)
        twin = await _start_baseline(settings, eager=True)
        try:
            for i, store in enumerate(cfg.stores):
                first = i == 0
                results[store] = await _pipeline(
                    cfg, settings, producer, pnid, users, store,
                    baseline=baseline if first else None, twin=twin if first else None,
                )  # fmt: skip
                if first:
                    results["baseline"] = results[store].pop("baseline")
                    results["paired_ratios"] = results[store].pop("paired_ratios")
                    results["ratio"] = round(statistics.median(results["paired_ratios"]), 2)
                    eager = results[store].pop("baseline_eager", None)
                    if eager is not None:
                        results["baseline_eager"] = eager
                        results["ratio_like_for_like"] = round(
                            statistics.median(eager["paired_ratios"]), 2
                        )
        finally:
            await baseline.stop()
            await twin.stop()
        _print_table(results)
        return results
    finally:
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        broker.stop()


def _print_table(r: dict[str, Any]) -> None:
    rows = [("baseline (bare Faust, 2 hops)", r["baseline"])] if "baseline" in r else []
    if "baseline_eager" in r:
        rows.append(("bare Faust + eager delivery", r["baseline_eager"]))
    rows += [(f"pipeline, {s} store", r[s]) for s in r["config"]["stores"]]
    print(
        f"{'':32} {'events/s':>9} {'burst p50':>10} {'burst p95':>10} "
        f"{'paced p50':>10} {'paced p95':>10}"
    )
    for name, row in rows:
        tp, lat = row["throughput"], row.get("latency", {})
        print(
            f"{name:32} {tp['events_per_s']:>9,.0f} {tp['latency_p50_ms']:>8.0f}ms "
            f"{tp['latency_p95_ms']:>8.0f}ms {lat.get('latency_p50_ms', float('nan')):>8.1f}ms "
            f"{lat.get('latency_p95_ms', float('nan')):>8.1f}ms"
        )
    if "ratio" in r:
        verdict = "meets" if r["ratio"] >= 0.6 else "MISSES"
        rounds = ", ".join(f"{x:.2f}" for x in r["paired_ratios"])
        print(
            f"ratio pipeline/baseline: {r['ratio']:.2f}, median of {len(r['paired_ratios'])} "
            f"paired rounds ({rounds}); {verdict} the 0.60 goal"
        )
    if "ratio_like_for_like" in r:
        rounds = ", ".join(f"{x:.2f}" for x in r["baseline_eager"]["paired_ratios"])
        print(
            f"like for like (both with eager delivery): {r['ratio_like_for_like']:.2f}, "
            f"median of paired rounds ({rounds})"
        )
    limits = {"memory": 400, "rocksdb": 200}
    for store in r["config"]["stores"]:
        row = r[store]
        final = row["rss_final_mb"].get("VmRSS", float("nan"))
        verdict = "meets" if final < limits.get(store, float("inf")) else "MISSES"
        print(
            f"worker RSS, {store}: idle {row['rss_idle_mb'].get('VmRSS', float('nan')):.0f} MB, "
            f"{row['live_conversations']:,} conversations {final:.0f} MB "
            f"(peak {row['rss_final_mb'].get('VmHWM', float('nan')):.0f} MB, "
            f"{row['rss_per_10k_conversations_mb']:.1f} MB per 10k; {verdict} the "
            f"{limits.get(store)} MB goal); filled in {row['fill_seconds']:.0f} s"
        )


def run(
    n: int | None = None,
    conversations: int | None = None,
    *,
    latency_events: int | None = None,
    latency_rate: float | None = None,
    stores: tuple[str, ...] | None = None,
    chunk: int | None = None,
    warmup: int = 200,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Run the benchmark; arguments default to the ``ONYX_WA_BENCH_STREAMS_*`` variables."""
    env_stores = os.environ.get("ONYX_WA_BENCH_STREAMS_STORES", "memory,rocksdb")
    cfg = Config(
        n=n if n is not None else _env_int("N", 10_000),
        conversations=conversations
        if conversations is not None
        else _env_int("CONVERSATIONS", 100_000),
        latency_events=latency_events
        if latency_events is not None
        else _env_int("LATENCY_EVENTS", 1_000),
        latency_rate=latency_rate
        if latency_rate is not None
        else float(os.environ.get("ONYX_WA_BENCH_STREAMS_LATENCY_RATE", 200)),
        stores=tuple(stores)
        if stores is not None
        else tuple(s.strip() for s in env_stores.split(",") if s.strip()),
        chunk=chunk if chunk is not None else _env_int("CHUNK", 20_000),
        warmup=warmup,
        rounds=max(1, rounds if rounds is not None else _env_int("ROUNDS", 3)),
    )
    return asyncio.run(_run(cfg))


# --- the baseline app (python -m bench.streams baseline) ----------------------------------------


def baseline_topics(settings: Any) -> tuple[str, str, str]:
    prefix = settings.topic_prefix
    return (f"{prefix}.raw", f"{prefix}.t1", f"{prefix}.t2")


async def serve_baseline(
    settings: Any, port: int, stop: asyncio.Event, *, eager: bool = False
) -> None:
    """A bare Faust app: raw → t1 → t2, bytes in and out, same broker settings as the worker.

    ``eager``: like the worker's process: its consumer delivers like the worker's
    (``streams.eager_delivery``) and its collector is tuned the same (``onyx_wa.gc_tuning``)."""
    from aiohttp import web

    from bench.bare_faust import bare_app
    from streams.worker import app_ready

    app = bare_app(settings, f"{settings.topic_prefix}-app", "faust-baseline", eager=eager)
    raw, t1_name, t2_name = baseline_topics(settings)

    def topic(name: str) -> Any:
        return app.topic(
            name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
        )

    t1, t2 = topic(t1_name), topic(t2_name)

    @app.agent(topic(raw), name="hop1")
    async def hop1(stream: Any) -> None:
        async for event in stream.events():
            await t1.send(key=event.key, value=event.value)

    @app.agent(t1, name="hop2")
    async def hop2(stream: Any) -> None:
        async for event in stream.events():
            await t2.send(key=event.key, value=event.value)

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({}, status=200 if app_ready(app) else 503)

    await app.start()
    if eager:  # like for like: the collector as the worker's process sets it (serve_worker)
        from onyx_wa.gc_tuning import tune_gc

        tune_gc(settings.gc_young_threshold)
    web_app = web.Application()
    web_app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(Exception):
            await app.stop()


def _main(argv: list[str]) -> None:  # pragma: no cover - runs in a child process
    import argparse

    from onyx_wa.runtime import run_service
    from onyx_wa.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m bench.streams")
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("baseline", help="run the bare Faust baseline app (settings from env)")
    base.add_argument("--port", type=int, required=True, help="/readyz port")
    base.add_argument("--eager", action="store_true", help="deliver like the worker's consumer")
    sub.add_parser("run", help="run the whole benchmark")
    args = parser.parse_args(argv)
    if args.command == "baseline":
        settings = load_settings()
        run_service(lambda stop: serve_baseline(settings, args.port, stop, eager=args.eager))
    else:
        run()


if __name__ == "__main__":  # pragma: no cover
    _main(sys.argv[1:])
