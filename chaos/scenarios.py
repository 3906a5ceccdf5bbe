"""The chaos scenarios: a steady load, one fault, and a count of what users received.

Every scenario offers questions at a fixed rate to one bot, injects its fault while the load
runs, then waits for the replies and counts, per question, the replies WhatsApp accepted that
answer it (threaded to it: ``context.message_id``). The verdict is the user's view:

- **lost**: questions with no reply at all (an answer or a polite failure message);
- **duplicated**: extra replies to a question, plus any outbound id (the egress's idempotency
  key, which every send carries as ``biz_opaque_callback_data``) that WhatsApp accepted twice.

Both must be 0. One documented exception, printed separately: the embedded broker keeps
nothing on disk, so questions the ingress had acknowledged but the pipeline had not answered
when the broker stopped are gone with it (``lost_with_broker_memory``). On Apache Kafka they
are kept on disk and answered after the restart; that run needs Docker
(``docker-compose.kafka.yml``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.load import MetaLoad
from chaos.rig import ChaosRig


@dataclass
class Profile:
    """How hard and how long: ``full`` for ``make chaos``, ``short`` for ``make test``."""

    rate: float
    duration_s: float
    drain_s: float
    settle_s: float = 3.0


FULL = Profile(rate=10.0, duration_s=20.0, drain_s=150.0)
SHORT = Profile(rate=6.0, duration_s=8.0, drain_s=90.0)


@dataclass
class Outcome:
    name: str
    expected: int
    delivered: int
    lost: int
    duplicated: int
    redeliveries: int
    seconds: float
    lost_with_broker_memory: int = 0
    checks: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and not self.failures

    def line(self) -> str:
        extra = (
            f" · lost with the broker's memory {self.lost_with_broker_memory} (see docs)"
            if self.lost_with_broker_memory
            else ""
        )
        checks = "".join(f" · {k} {v}" for k, v in self.checks.items())
        verdict = "PASS" if self.passed else "FAIL " + "; ".join(self.failures)
        return (
            f"{self.name:<22} expected {self.expected:>4} · delivered {self.delivered:>4} · "
            f"lost {self.lost} · duplicated {self.duplicated} · redelivered webhooks "
            f"{self.redeliveries}{extra}{checks} · {self.seconds:.0f} s  {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.name, "expected": self.expected, "delivered": self.delivered,
            "lost": self.lost, "duplicated": self.duplicated, "redeliveries": self.redeliveries,
            "lost_with_broker_memory": self.lost_with_broker_memory, "checks": self.checks,
            "failures": self.failures, "passed": self.passed, "seconds": round(self.seconds, 1),
        }  # fmt: skip


Fault = Callable[[ChaosRig, MetaLoad, Profile, dict[str, Any]], Awaitable[None]]


@dataclass
class Scenario:
    name: str
    summary: str
    fault: Fault
    bot: str = "local"
    copies: int = 1


# --- counting -----------------------------------------------------------------------------------


# what streams/offset_guard.py logs when Faust's consumer skipped records and it reads them again
SKIP_LOG = "the consumer skipped offsets"


def count_replies(rig: ChaosRig, load: MetaLoad) -> tuple[collections.Counter[str], int]:
    """Replies per question (by ``context``) and outbound ids accepted more than once."""
    replies: collections.Counter[str] = collections.Counter()
    ids: collections.Counter[str] = collections.Counter()
    for message in list(rig.sim.messages):
        if message["phone_number_id"] != load.phone_number_id:
            continue
        if message.get("context") in load.questions:
            replies[message["context"]] += 1
        callback = (message.get("payload") or {}).get("biz_opaque_callback_data")
        if callback:
            ids[callback] += 1
    return replies, sum(n - 1 for n in ids.values() if n > 1)


async def wait_for_replies(
    rig: ChaosRig, load: MetaLoad, profile: Profile, gone: set[str] | None = None
) -> None:
    """Until every question (but those ``gone`` with the broker's memory) has a reply."""
    expected = set(load.questions) - (gone or set())
    deadline = time.monotonic() + profile.drain_s
    while time.monotonic() < deadline:
        replies, _ = count_replies(rig, load)
        if expected <= set(replies):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(profile.settle_s)  # a duplicate would arrive now


async def run_scenario(rig: ChaosRig, scenario: Scenario, profile: Profile) -> Outcome:
    assert rig.http is not None and rig.settings is not None
    rig.reset_fakes()
    bot = rig.bots[scenario.bot]
    load = MetaLoad(
        rig.http, rig.settings.ingress_url, bot.phone_number_id, bot.app_secret,
        rate=profile.rate, duration_s=profile.duration_s, copies=scenario.copies,
    )  # fmt: skip
    started = time.monotonic()
    notes: dict[str, Any] = {}
    skips_before = rig.worker_log_count(SKIP_LOG)
    load_task = asyncio.ensure_future(load.run())
    try:
        await scenario.fault(rig, load, profile, notes)
        await load_task
    finally:
        if not load_task.done():
            load_task.cancel()
    memory_lost: set[str] = notes.pop("lost_with_broker_memory", set())
    await wait_for_replies(rig, load, profile, memory_lost)
    replies, doubled_ids = count_replies(rig, load)
    skips = rig.worker_log_count(SKIP_LOG) - skips_before
    if skips:
        notes["consumer_skips_reread"] = skips
    unanswered = set(load.questions) - set(replies)
    outcome = Outcome(
        name=scenario.name,
        expected=len(load.questions),
        delivered=len(replies),
        lost=len(unanswered - memory_lost),
        duplicated=sum(n - 1 for n in replies.values()) + doubled_ids,
        redeliveries=load.refused,
        seconds=time.monotonic() - started,
        lost_with_broker_memory=len(unanswered & memory_lost),
        checks=notes,
    )
    check = notes.pop("_check", None)
    if check is not None:
        outcome.failures += await check()
    if outcome.lost:
        sample = sorted(unanswered - memory_lost)[:3]
        outcome.checks["lost_reached"] = await trace(rig, sample)
    return outcome


async def trace(rig: ChaosRig, wamids: list[str]) -> dict[str, str]:
    """How far each question got: the last pipeline topic holding a record for it.

    Why: "lost 2" says that something failed, this says which stage to read the logs of."""
    from onyx_wa import topics as tp

    assert rig.settings is not None
    prefix = rig.settings.topic_prefix
    by_question = [
        (tp.INBOUND, "message_id"), (tp.CLASSIFIED, "message_id"),
        (tp.ANSWER_REQUESTS, "question_message_id"), (tp.ANSWER_RESULTS, "question_message_id"),
    ]  # fmt: skip
    reached = {w: "nothing (not even inbound)" for w in wamids}
    requests: dict[str, str] = {}
    for spec, field_name in by_question:
        for record in await read_topic(rig.settings, tp.full_name(spec, prefix), idle_s=1.0):
            wamid = record.get(field_name) or (record.get("message") or {}).get(field_name)
            if wamid in reached:
                reached[wamid] = spec.name
                if record.get("request_id"):
                    requests[record["request_id"]] = wamid
    for spec in (tp.OUTBOUND, tp.OUTBOUND_RESULTS, tp.OUTBOUND_DLQ):
        for record in await read_topic(rig.settings, tp.full_name(spec, prefix), idle_s=1.0):
            wamid = requests.get(record.get("request_id", ""))
            if wamid is not None:
                status = record.get("status")
                reached[wamid] = spec.name + (f" ({status})" if status else "")
    return reached


# --- the faults ---------------------------------------------------------------------------------


async def _at(profile: Profile, fraction: float) -> None:
    await asyncio.sleep(profile.duration_s * fraction)


async def kill_worker(rig: ChaosRig, load: MetaLoad, profile: Profile, notes: dict) -> None:
    await _at(profile, 0.35)
    worker = rig.workers["worker-1"]
    assert worker.popen is not None and rig.http is not None
    killed = worker.popen.pid
    worker.kill()
    worker.start()
    await worker.ready(rig.http)

    async def check() -> list[str]:
        for outcome in ("confirmed", "resent"):
            count = await rig.metric("onyx_wa_uncertain_sends_total", outcome=outcome)
            notes[f"uncertain_{outcome}"] = int(count)
        assert worker.popen is not None
        return [] if worker.popen.pid != killed else ["the worker was not restarted"]

    notes["_check"] = check


async def restart_ingress(rig: ChaosRig, load: MetaLoad, profile: Profile, notes: dict) -> None:
    await _at(profile, 0.35)
    await rig.restart_ingress(down_s=2.0)


async def restart_broker(rig: ChaosRig, load: MetaLoad, profile: Profile, notes: dict) -> None:
    """Stop the broker mid-load, start it again (empty), and restart the workers.

    While it is down the ingress answers 503 and Meta redelivers. The workers are restarted as
    a supervisor would (their groups, offsets and changelogs were in the broker's memory).
    """
    await _at(profile, 0.35)
    rig.stop_broker()
    stopped = time.monotonic()
    # the workers' groups, offsets and changelogs were in the broker's memory: a supervisor
    # restarts them against the new broker (on Kafka they would simply reconnect)
    for worker in rig.workers.values():
        worker.kill()
    # what the ingress had acknowledged and the pipeline not yet answered is in the broker
    replies, _ = count_replies(rig, load)
    notes["lost_with_broker_memory"] = {
        w for w, q in load.questions.items()
        if q.accepted_at is not None and q.accepted_at <= stopped and w not in replies
    }  # fmt: skip
    await asyncio.sleep(3.0)
    # Tansu creates a topic on the first produce to it (with its default partition count) and
    # then fails writes once the topic is created properly: the ingress waits, stopped, until
    # the topics exist (Meta's redeliveries meanwhile find the port closed). Kafka with
    # auto.create.topics.enable=false needs no such step: the ingress answers 503 until then.
    assert rig.ingress is not None and rig.http is not None
    await rig.ingress.stop()
    await rig.start_broker_again()
    rig.ingress.start()
    await rig.ingress.ready(rig.http)
    for worker in rig.workers.values():
        worker.start()
        await worker.ready(rig.http)


async def whatsapp_faults(rig: ChaosRig, load: MetaLoad, profile: Profile, notes: dict) -> None:
    """20% of sends fail: 5xx, 130429 (throughput) and 131056 (pair rate), all retried."""
    from sim.whatsapp import Faults

    before = await rig.metric("onyx_wa_sends_total", result="error")
    rig.sim.faults = Faults(codes={500: 0.07, 130429: 0.07, 131056: 0.06})
    await _at(profile, 1.0)
    rig.sim.faults = Faults()

    async def check() -> list[str]:
        retried = await rig.metric("onyx_wa_sends_total", result="error") - before
        notes["graph_errors_retried"] = int(retried)
        return [] if retried > 0 else ["no send failed: the faults were not injected"]

    notes["_check"] = check


async def onyx_faults(rig: ChaosRig, load: MetaLoad, profile: Profile, notes: dict) -> None:
    """Onyx fails in turn with 500s, 429s, cut streams and timeouts (30% of calls each time);
    retried, and what still fails becomes a polite reply."""
    from sim.onyx import Fault

    phases = [
        Fault(status=500, rate=0.3),
        Fault(status=429, rate=0.3, retry_after=0.2),
        Fault(cut_stream=True, rate=0.3),
        Fault(latency_s=3.0, rate=0.3),  # over the 2 s first-byte timeout
    ]
    before = await rig.metric("onyx_wa_answer_errors_total")
    for fault in phases:
        fault.paths = ("/api/chat/send-chat-message",)
        rig.onyx.fault = fault
        await asyncio.sleep(profile.duration_s / len(phases))
    rig.onyx.fault = None

    async def check() -> list[str]:
        # answers that failed after the retries and became a polite reply
        failed = int(await rig.metric("onyx_wa_answer_errors_total") - before)
        fired = sum(f.fired for f in phases)
        calls = [r for r in rig.onyx.requests if r["path"] == "/api/chat/send-chat-message"]
        notes.update(onyx_calls=len(calls), onyx_faults=fired, answers_failed_politely=failed)
        if not fired:
            return ["no Onyx fault fired"]
        # without retries every faulted call would fail its question: failed == fired
        if failed >= fired:
            return [f"{failed} polite failures for {fired} faults: no retries"]
        return []

    notes["_check"] = check


async def triple_delivery(rig: ChaosRig, load: MetaLoad, profile: Profile, notes: dict) -> None:
    """Nothing to inject: the load itself delivers every webhook three times."""
    before = await rig.metric("onyx_wa_duplicates_total", stage="conversation")

    async def check() -> list[str]:
        dropped = await rig.metric("onyx_wa_duplicates_total", stage="conversation") - before
        notes["duplicates_dropped"] = int(dropped)
        return [] if dropped > 0 else ["no duplicate was seen: the copies did not arrive"]

    notes["_check"] = check


async def statuses_out_of_order(
    rig: ChaosRig, load: MetaLoad, profile: Profile, notes: dict
) -> None:
    """Statuses arrive read → sent → delivered; a status never moves a message backwards."""
    rig.sim.status_delays_s = (0.6, 1.0, 0.2)  # sent, delivered, read

    async def check() -> list[str]:
        regressions = await _status_regressions(rig, load.phone_number_id)
        notes["status_regressions"] = regressions
        return [f"{regressions} statuses moved a message backwards"] if regressions else []

    notes["_check"] = check
    await _at(profile, 1.0)


async def rebalance(rig: ChaosRig, load: MetaLoad, profile: Profile, notes: dict) -> None:
    """A second worker joins mid-load, then the first leaves (SIGTERM), then comes back."""
    await _at(profile, 0.2)
    second = await rig.start_worker("worker-2")
    await _at(profile, 0.3)
    first = rig.workers["worker-1"]
    await first.stop()
    assert rig.http is not None
    first.start()
    await first.ready(rig.http)
    notes["workers"] = 2
    await _at(profile, 0.2)
    await second.stop()
    del rig.workers["worker-2"]


async def _status_regressions(rig: ChaosRig, phone_number_id: str) -> int:
    """Status results (the statuses agent's output) that went backwards for a wamid."""
    from onyx_wa import topics as t

    assert rig.settings is not None
    rank = {"sent": 1, "delivered": 2, "read": 3, "failed": 4}
    best: dict[str, int] = {}
    regressions = 0
    name = t.full_name(t.OUTBOUND_RESULTS, rig.settings.topic_prefix)
    for record in await read_topic(rig.settings, name):
        if record.get("phone_number_id") != phone_number_id or not record.get("wamid"):
            continue
        r = rank.get(record["status"], 0)
        if r < best.get(record["wamid"], 0):
            regressions += 1
        best[record["wamid"]] = max(r, best.get(record["wamid"], 0))
    return regressions


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("kill-worker", "kill -9 the worker mid-load and restart it", kill_worker),
        Scenario("restart-ingress", "kill the ingress, 2 s down, restart", restart_ingress),
        Scenario("restart-broker", "stop the broker 3 s, restart it empty", restart_broker),
        Scenario("whatsapp-faults", "20% of sends: 5xx, 130429, 131056", whatsapp_faults),
        Scenario("onyx-faults", "Onyx 500s, 429s, cut streams, timeouts", onyx_faults, bot="onyx"),
        Scenario("triple-delivery", "every webhook delivered 3 times", triple_delivery, copies=3),
        Scenario("statuses-out-of-order", "read before sent and delivered", statuses_out_of_order),
        Scenario("rebalance", "a second worker joins, the first leaves", rebalance),
    )
}
# the subset `make test` runs (tests/test_chaos.py): a crash, a rebalance (both lost records to
# Faust's consumer before streams/offset_guard.py) and duplicate webhooks
SHORT_SET = ("kill-worker", "rebalance", "triple-delivery")


async def read_topic(settings: Any, name: str, idle_s: float = 1.5) -> list[dict[str, Any]]:
    """Every record of a topic, decoded, in partition order: read until ``idle_s`` of quiet
    (not up to ``end_offsets``: the embedded broker's is the last batch's base offset + 1)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from onyx_wa.kafka import consumer_kwargs
    from schemas.codec import get_codec

    codec = get_codec()
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, None, enable_auto_commit=False))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(name) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - first contact
            parts = consumer.partitions_for_topic(name) or set()
        consumer.assign([TopicPartition(name, p) for p in sorted(parts)])
        await consumer.seek_to_beginning()
        out: list[dict[str, Any]] = []
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                return out
            for records in batch.values():
                out += [codec.decode(r.value) for r in records if r.value is not None]
    finally:
        await consumer.stop()
