"""End-to-end benchmark: signed webhook in → reply accepted by the WhatsApp simulator.

Everything runs on this machine at once, each part in its own process as in production: the
embedded broker, the simulator (which also serves the fake Onyx), the ingress, the worker(s)
and this load generator. Four measurements:

1. **pipeline vs bare Faust chain** with instant answers (the local backend): throughput of a
   burst and end-to-end latency (webhook sent → reply accepted by the simulator; p50/p95/p99)
   at fixed offered loads. The baseline is the same skeleton with no work: a bare aiohttp
   handler producing the body to a topic (after the broker's ack, like the ingress), four bare
   Faust agents forwarding bytes through four more topics (raw → inbound → requests → results
   → outbound: the pipeline's hops), and a last agent posting one text reply to the simulator.
2. **pipeline vs a naive inline bot** with answers that take ``ONYX_WA_BENCH_E2E_SLOW_S`` (2 s):
   the inline bot's webhook handler calls Onyx and then the Graph API before answering 200,
   as many simple bots do. Offered load is fixed; what matters is the webhook latency Meta sees
   (it retries after ~1 s of silence on busy deliveries) and the reply throughput.
3. **scaling**: the burst again with a second worker process in the group (ratio 2 / 1).
4. memory per conversation is measured by ``bench.streams`` (``rss_per_10k_conversations_mb``).

Knobs (environment): ``ONYX_WA_BENCH_E2E_N`` (burst size, 2,000), ``..._RATES`` (offered loads,
"25,50,100"), ``..._SECONDS`` (per load, 10), ``..._SLOW_S`` (2), ``..._SLOW_RATE`` (20/s),
``..._PARTITIONS`` (8).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.ingress import wait_http
from bench.stats import percentile
from onyx_wa.broker import free_port
from sim import meta

SECRET = "bench-e2e-secret"
QUESTION = "How do I connect to the VPN? ({i})"
BIG = 1_000_000_000
BASE_TOPICS = ("b0", "b1", "b2", "b3", "b4")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"ONYX_WA_BENCH_E2E_{name}", default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(f"ONYX_WA_BENCH_E2E_{name}", default))


# --- the workload -------------------------------------------------------------------------------


@dataclass
class Question:
    body: bytes
    headers: dict[str, str]
    wamid: str


def questions(pnid: str, start: int, count: int) -> list[Question]:
    """Signed one-question deliveries, each from a new user (a new conversation)."""
    out = []
    for i in range(start, start + count):
        user = f"1{i:010d}"
        msg = meta.text_message(user, QUESTION.format(i=i))
        doc = meta.notification(pnid, messages=[msg], contacts=[meta.contact(user)])
        body = meta.serialise(doc)
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": meta.sign(SECRET, body),
        }
        out.append(Question(body, headers, msg["id"]))
    return out


class Users:
    def __init__(self) -> None:
        self.next = 0

    def take(self, pnid: str, count: int) -> list[Question]:
        batch = questions(pnid, self.next, count)
        self.next += count
        return batch


@dataclass
class Sent:
    """When each question left (epoch s) and how the webhook answered."""

    at: dict[str, float] = field(default_factory=dict)
    webhook_ms: list[float] = field(default_factory=list)
    errors: int = 0


async def _post(http: aiohttp.ClientSession, url: str, q: Question, sent: Sent, at: float) -> None:
    sent.at[q.wamid] = at
    try:
        async with http.post(url, data=q.body, headers=q.headers) as resp:
            await resp.read()
            ok = resp.status == 200
    except aiohttp.ClientError:
        ok = False
    sent.webhook_ms.append((time.time() - at) * 1000)
    sent.errors += 0 if ok else 1


async def burst(http: aiohttp.ClientSession, url: str, batch: list[Question], conc: int) -> Sent:
    sent = Sent()
    sem = asyncio.Semaphore(conc)

    async def one(q: Question) -> None:
        async with sem:
            await _post(http, url, q, sent, time.time())

    await asyncio.gather(*(one(q) for q in batch))
    return sent


async def open_loop(
    http: aiohttp.ClientSession, url: str, batch: list[Question], rate: float
) -> Sent:
    """Each question at its scheduled time; latency counts from the schedule (no coordinated
    omission: a stalled server does not slow the offered load down)."""
    sent = Sent()
    start = time.time() + 0.05
    tasks = []
    for i, q in enumerate(batch):
        due = start + i / rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(_post(http, url, q, sent, due)))
    await asyncio.gather(*tasks)
    return sent


async def replies(
    http: aiohttp.ClientSession, sim: str, wamids: set[str], timeout_s: float
) -> dict[str, float]:
    """First reply accepted by the simulator per question (epoch s), by ``context``."""
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"{sim}/_sim/messages") as resp:
            for m in await resp.json():
                ctx = m.get("context")
                if ctx in wamids and ctx not in got:
                    got[ctx] = datetime.fromisoformat(m["time"]).timestamp()
        if len(got) >= len(wamids):
            break
        await asyncio.sleep(0.5)
    return got


async def clear(http: aiohttp.ClientSession, sim: str) -> None:
    async with http.delete(f"{sim}/_sim/messages"):
        pass


def summarize(sent: Sent, got: dict[str, float], offered: float | None = None) -> dict[str, Any]:
    lat = [(got[w] - sent.at[w]) * 1000 for w in got]
    first = min(sent.at.values())
    out: dict[str, Any] = {
        "questions": len(sent.at),
        "replied": len(got),
        "webhook_errors": sent.errors,
        "webhook_p50_ms": round(percentile(sent.webhook_ms, 0.5), 1),
        "webhook_p99_ms": round(percentile(sent.webhook_ms, 0.99), 1),
        "e2e_p50_ms": round(percentile(lat, 0.5), 1),
        "e2e_p95_ms": round(percentile(lat, 0.95), 1),
        "e2e_p99_ms": round(percentile(lat, 0.99), 1),
    }
    if got:
        out["replies_per_s"] = round(len(got) / (max(got.values()) - first), 1)
    if offered is not None:
        out["offered_per_s"] = offered
    return out


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Proc:
    log = (logs / f"{name}.log").open("wb")
    popen = subprocess.Popen(argv, env=env, stdout=log, stderr=log)  # noqa: S603
    log.close()
    return Proc(name, popen)


async def ready(url: str, proc: Proc, logs: Path, timeout_s: float = 120) -> None:
    try:
        await wait_http(url, timeout_s=timeout_s)
    except RuntimeError:
        tail = (logs / f"{proc.name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{proc.name} not ready; log tail:\n{tail}") from None


# --- the run ------------------------------------------------------------------------------------


async def _measure(
    http: aiohttp.ClientSession, url: str, sim: str, users: Users, pnid: str, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Warm-up, a burst and the fixed loads against one system (pipeline or baseline)."""
    warm = users.take(pnid, 50)
    sent = await burst(http, url, warm, 16)
    await replies(http, sim, set(sent.at), 90)
    await clear(http, sim)
    out: dict[str, Any] = {}
    batch = users.take(pnid, cfg["n"])
    sent = await burst(http, url, batch, 64)
    got = await replies(http, sim, set(sent.at), 120 + cfg["n"] / 20)
    out["burst"] = summarize(sent, got)
    await clear(http, sim)
    out["fixed"] = []
    for rate in cfg["rates"]:
        batch = users.take(pnid, int(rate * cfg["seconds"]))
        sent = await open_loop(http, url, batch, rate)
        got = await replies(http, sim, set(sent.at), 60)
        out["fixed"].append(summarize(sent, got, rate))
        await clear(http, sim)
    return out


async def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    from onyx_wa.bots import add_bot
    from onyx_wa.broker import EmbeddedBroker
    from onyx_wa.kafka import ensure_pipeline_topics, ensure_topics
    from onyx_wa.settings import load_settings, settings_env
    from store.migrate import upgrade

    data = Path(tempfile.mkdtemp(prefix="onyx-wa-bench-e2e-"))
    broker = EmbeddedBroker(port=free_port())
    await broker.start()
    ports = {k: free_port() for k in ("sim", "onyx", "ingress", "w1", "w2", "bi", "bw", "inline")}
    sim = f"http://127.0.0.1:{ports['sim']}"
    onyx = f"http://127.0.0.1:{ports['onyx']}"
    settings = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu", data_dir=data,
        partitions=cfg["partitions"], encryption_key=Fernet.generate_key().decode(),
        graph_api_url=sim, ingress_port=ports["ingress"], sim_port=ports["sim"],
        log_level="WARNING", kafka_session_timeout_s=6, tenant_flood_ceiling_per_s=1e9,
        user_questions_per_minute=BIG, tenant_questions_per_minute=BIG,
        tenant_questions_per_day=BIG, bot_cache_ttl_s=1.0,
    )  # fmt: skip
    env = {**os.environ, **settings_env(settings)}
    procs: list[Proc] = []
    results: dict[str, Any] = {"config": cfg}
    try:
        await ensure_pipeline_topics(settings)
        await ensure_topics(
            settings.bootstrap_servers,
            {f"e2ebase.{name}": settings.partitions for name in BASE_TOPICS},
        )
        await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
        fast, slow = str(uuid.uuid4().int)[:15], str(uuid.uuid4().int)[:15]
        common = {
            "app_secret": SECRET, "verify_token": "v", "access_token": "a",
            "throughput_per_s": 1000, "user_questions_per_minute": BIG,
            "tenant_questions_per_minute": BIG, "tenant_questions_per_day": BIG,
        }  # fmt: skip
        await add_bot(settings, tenant_id="fast", phone_number_id=fast, **common)
        await add_bot(
            settings, tenant_id="slow", phone_number_id=slow, answer_backend="onyx",
            onyx_base_url=onyx, onyx_api_key="bench-key", **common,
        )  # fmt: skip
        cli = [sys.executable, "-m", "onyx_wa.cli"]
        procs.append(spawn("sim", [*cli, "sim", "--onyx-port", str(ports["onyx"])], env, data))
        procs.append(spawn("ingress", [*cli, "ingress"], env, data))
        await ready(f"{sim}/healthz", procs[0], data)
        await ready(f"http://127.0.0.1:{ports['ingress']}/healthz", procs[1], data)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
            for pnid in (fast, slow):
                async with http.post(f"{sim}/_sim/numbers/{pnid}", json={"throughput_per_s": 1e9}):
                    pass
            users = Users()

            # 1. the bare Faust chain (baseline) first, then the pipeline, in the same run
            benv = {**env, "ONYX_WA_TOPIC_PREFIX": "e2ebase"}
            base_argv = [sys.executable, "-m", "bench.e2e"]
            bi = spawn(
                "baseline-ingress", [*base_argv, "baseline-ingress", str(ports["bi"])], benv, data
            )
            bw = spawn(
                "baseline-worker", [*base_argv, "baseline-worker", str(ports["bw"])], benv, data
            )
            procs += [bi, bw]
            await ready(f"http://127.0.0.1:{ports['bi']}/healthz", bi, data)
            await ready(f"http://127.0.0.1:{ports['bw']}/readyz", bw, data)
            base_url = f"http://127.0.0.1:{ports['bi']}/webhooks/whatsapp"
            results["baseline"] = await _measure(http, base_url, sim, users, fast, cfg)
            bi.stop()
            bw.stop()
            _print("baseline (bare Faust chain)", results["baseline"])

            wenv = {**env, "ONYX_WA_WORKER_WEB_PORT": str(ports["w1"])}
            w1 = spawn("worker-1", [*cli, "worker"], wenv, data)
            procs.append(w1)
            await ready(f"http://127.0.0.1:{ports['w1']}/readyz", w1, data)
            url = f"http://127.0.0.1:{ports['ingress']}/webhooks/whatsapp"
            results["pipeline"] = await _measure(http, url, sim, users, fast, cfg)
            _print("pipeline (one worker)", results["pipeline"])
            b, p = results["baseline"]["burst"], results["pipeline"]["burst"]
            for name, row in (("baseline", b), ("pipeline", p)):
                if row["replied"] < row["questions"]:
                    raise RuntimeError(
                        f"{name}: only {row['replied']}/{row['questions']} replies reached the "
                        f"simulator; see the logs in {data}"
                    )
            results["ratio"] = round(p["replies_per_s"] / b["replies_per_s"], 2)

            # 2. slow answers: the pipeline versus the naive inline bot, same offered load
            async with http.post(f"{onyx}/_fake/faults", json={"latency_s": cfg["slow_s"]}):
                pass
            iargv = [*base_argv, "inline", str(ports["inline"]), sim, onyx]
            inline = spawn("inline-bot", iargv, env, data)
            procs.append(inline)
            await ready(f"http://127.0.0.1:{ports['inline']}/healthz", inline, data)
            slow_n = int(cfg["slow_rate"] * cfg["seconds"])
            timeout = cfg["slow_s"] * 4 + 60
            sent = await open_loop(http, url, users.take(slow, slow_n), cfg["slow_rate"])
            pipe_slow = summarize(sent, await replies(http, sim, set(sent.at), timeout))
            await clear(http, sim)
            inline_url = f"http://127.0.0.1:{ports['inline']}/webhooks/whatsapp"
            sent = await open_loop(http, inline_url, users.take(slow, slow_n), cfg["slow_rate"])
            inline_slow = summarize(sent, await replies(http, sim, set(sent.at), timeout))
            await clear(http, sim)
            async with http.delete(f"{onyx}/_fake/faults"):
                pass
            async with http.delete(f"{onyx}/_fake/requests"):
                pass
            results["slow_answers"] = {
                "answer_latency_s": cfg["slow_s"], "offered_per_s": cfg["slow_rate"],
                "pipeline": pipe_slow, "inline_bot": inline_slow,
            }  # fmt: skip
            _print_slow(results["slow_answers"])

            # 3. scaling: a second worker joins the group
            wenv2 = {**env, "ONYX_WA_WORKER_WEB_PORT": str(ports["w2"]),
                     "ONYX_WA_DATA_DIR": str(data / "w2"), "DATABASE_URL": settings.sqlalchemy_url}  # fmt: skip
            w2 = spawn("worker-2", [*cli, "worker"], wenv2, data)
            procs.append(w2)
            await ready(f"http://127.0.0.1:{ports['w2']}/readyz", w2, data)
            await ready(f"http://127.0.0.1:{ports['w1']}/readyz", w1, data)  # rebalanced
            sent = await burst(http, url, users.take(fast, 50), 16)  # warm the new worker
            await replies(http, sim, set(sent.at), 90)
            await clear(http, sim)
            sent = await burst(http, url, users.take(fast, cfg["n"]), 64)
            two = summarize(sent, await replies(http, sim, set(sent.at), 120 + cfg["n"] / 20))
            results["two_workers"] = {
                "burst": two,
                "scaling_ratio": round(two["replies_per_s"] / p["replies_per_s"], 2),
            }
            print(
                f"scaling: two workers {two['replies_per_s']:,.0f} replies/s vs one "
                f"{p['replies_per_s']:,.0f} (×{results['two_workers']['scaling_ratio']:.2f})",
                flush=True,
            )
        return results
    finally:
        for proc in reversed(procs):
            proc.stop()
        broker.stop()


def _print(name: str, r: dict[str, Any]) -> None:
    b = r["burst"]
    print(
        f"{name}: burst of {b['questions']:,}: {b.get('replies_per_s', 0):,.0f} replies/s "
        f"(replied {b['replied']:,}), webhook p99 {b['webhook_p99_ms']} ms",
        flush=True,
    )
    for row in r["fixed"]:
        print(
            f"  at {row['offered_per_s']}/s: e2e p50 {row['e2e_p50_ms']} ms, p95 "
            f"{row['e2e_p95_ms']} ms, p99 {row['e2e_p99_ms']} ms; webhook p99 "
            f"{row['webhook_p99_ms']} ms; replied {row['replied']}/{row['questions']}",
            flush=True,
        )


def _print_slow(r: dict[str, Any]) -> None:
    for name in ("pipeline", "inline_bot"):
        row = r[name]
        print(
            f"answers taking {r['answer_latency_s']} s at {r['offered_per_s']}/s — {name}: "
            f"webhook p50 {row['webhook_p50_ms']} ms, p99 {row['webhook_p99_ms']} ms; "
            f"{row.get('replies_per_s', 0):.1f} replies/s, replied {row['replied']}/"
            f"{row['questions']}, e2e p50 {row['e2e_p50_ms']} ms",
            flush=True,
        )


def run(**overrides: Any) -> dict[str, Any]:
    cfg = {
        "n": _env_int("N", 2000),
        "rates": [
            float(x) for x in os.environ.get("ONYX_WA_BENCH_E2E_RATES", "25,50,100").split(",")
        ],
        "seconds": _env_float("SECONDS", 10),
        "slow_s": _env_float("SLOW_S", 2.0),
        "slow_rate": _env_float("SLOW_RATE", 20),
        "partitions": _env_int("PARTITIONS", 8),
    }
    cfg.update(overrides)
    return asyncio.run(_run(cfg))


async def serve_until(app: Any, port: int, stop: asyncio.Event) -> None:
    """Serve an aiohttp app on 127.0.0.1:``port`` until ``stop`` is set."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


# --- the baseline's and the inline bot's processes (python -m bench.e2e NAME PORT ...) ------------


async def serve_baseline_ingress(port: int, stop: asyncio.Event) -> None:
    """A bare handler: read the body, produce it, answer 200 after the broker's ack."""
    from aiohttp import web

    from onyx_wa.kafka import start_producer
    from onyx_wa.settings import load_settings

    settings = load_settings()
    producer = await start_producer(settings)

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        await producer.send_and_wait(f"e2ebase.{BASE_TOPICS[0]}", body, key=uuid.uuid4().bytes)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks/whatsapp", webhook)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok"))
    try:
        await serve_until(app, port, stop)
    finally:
        await producer.stop()


async def serve_baseline_worker(port: int, stop: asyncio.Event) -> None:
    """Bare Faust: four agents forwarding bytes b0 → b4, one posting the reply (same hops)."""
    from aiohttp import web

    from bench.bare_faust import bare_app
    from onyx_wa.settings import load_settings
    from streams.worker import app_ready

    settings = load_settings()
    app = bare_app(settings, "e2ebase-worker", "e2ebase")
    topics = [
        app.topic(f"e2ebase.{n}", key_serializer="raw", value_serializer="raw", internal=False)
        for n in BASE_TOPICS
    ]

    def forward(source: Any, sink: Any, name: str) -> None:
        @app.agent(source, name=name)
        async def hop(stream: Any) -> None:
            async for event in stream.events():
                await sink.send(key=event.key, value=event.value)

    for i in range(len(topics) - 1):
        forward(topics[i], topics[i + 1], f"hop{i}")
    http = aiohttp.ClientSession()

    @app.agent(topics[-1], name="send")
    async def send(stream: Any) -> None:
        async for value in stream:
            change = json.loads(value)["entry"][0]["changes"][0]["value"]
            msg = change["messages"][0]
            url = f"{settings.graph_api_url}/v25.0/{change['metadata']['phone_number_id']}/messages"
            payload = {
                "messaging_product": "whatsapp", "recipient_type": "individual",
                "to": msg["from"], "type": "text",
                "text": {"body": "ok"}, "context": {"message_id": msg["id"]},
            }  # fmt: skip
            async with http.post(url, json=payload, headers={"Authorization": "Bearer a"}) as r:
                await r.read()

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({}, status=200 if app_ready(app) else 503)

    await app.start()
    web_app = web.Application()
    web_app.router.add_get("/readyz", readyz)
    try:
        await serve_until(web_app, port, stop)
    finally:
        await http.close()
        with contextlib.suppress(Exception):
            await app.stop()


async def serve_inline_bot(port: int, sim: str, onyx: str, stop: asyncio.Event) -> None:
    """The naive bot: verify, ask Onyx, send the reply, and only then answer the webhook."""
    from aiohttp import web

    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Hub-Signature-256", "")):
            return web.Response(status=401)
        value = json.loads(body)["entry"][0]["changes"][0]["value"]
        msg = value["messages"][0]
        pnid = value["metadata"]["phone_number_id"]
        ask = {
            "message": msg["text"]["body"], "stream": False,
            "chat_session_info": {"persona_id": 0}, "origin": "api",
        }  # fmt: skip
        headers = {"Authorization": "Bearer bench-key"}
        async with http.post(f"{onyx}/api/chat/send-chat-message", json=ask, headers=headers) as r:
            answer = (await r.json()).get("answer") or "…"
        payload = {
            "messaging_product": "whatsapp", "recipient_type": "individual",
                "to": msg["from"], "type": "text",
            "text": {"body": answer[:4096]}, "context": {"message_id": msg["id"]},
        }  # fmt: skip
        url = f"{sim}/v25.0/{pnid}/messages"
        async with http.post(url, json=payload, headers={"Authorization": "Bearer a"}) as r:
            await r.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks/whatsapp", webhook)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok"))
    try:
        await serve_until(app, port, stop)
    finally:
        await http.close()


def _main(argv: list[str]) -> None:  # pragma: no cover - child processes
    from onyx_wa.runtime import run_service

    command, rest = argv[0], argv[1:]
    if command == "baseline-ingress":
        run_service(lambda stop: serve_baseline_ingress(int(rest[0]), stop))
    elif command == "baseline-worker":
        run_service(lambda stop: serve_baseline_worker(int(rest[0]), stop))
    elif command == "inline":
        run_service(lambda stop: serve_inline_bot(int(rest[0]), rest[1], rest[2], stop))
    elif command == "run":
        print(json.dumps(run(), indent=2, default=str))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":  # pragma: no cover
    _main(sys.argv[1:])
