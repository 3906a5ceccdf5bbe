"""No commit over an output the broker refused: failed deliveries stop the worker's commits.

Faust commits an input's offset after ``producer.flush()``, and a flush returns once every
pending record is *resolved*, delivered or failed. A record the broker refused (a timeout
through an outage longer than the producer's retries, a partition without a leader) was
logged and its input committed anyway: the output was lost for good, replay aside.

:class:`GuardedProducer` (Faust's aiokafka producer, installed by :func:`install`) counts the
deliveries that failed. Every record of the pipeline goes through its ``send``: Faust's topic
and table writes, ``Topics.send``, ``TableWriter``. The consumer's commit
(``streams.offset_guard.GuardedConsumer._commit``) runs after that flush. If a delivery failed
since the last commit, it commits nothing and crashes the app. The worker process exits
(``streams.worker.Worker.run_until``) and its restart resumes from the last good commit. The
inputs are then processed again and their outputs written again, with the same deterministic
ids, so downstream keeps one of each.

A send that raises at once (rather than failing its delivery later) escapes the agent:
:func:`on_agent_error`, installed on every agent by :func:`guard_agents`, crashes the app the
same way.

The egress sender writes through ``send_batch`` (``egress.stage.RecordBatches``) and awaits
each of its records itself: its failures leave the message unacknowledged instead.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer

from onyx_wa.metrics import PRODUCE_FAILURES

log = logging.getLogger(__name__)


class RecordsNotDelivered(RuntimeError):
    """Records the broker refused since the last commit: committing would lose them."""


class GuardedProducer(AIOKafkaProducer):
    """Faust's aiokafka producer, counting the records whose delivery failed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_deliveries = 0  # since the worker started: any one stops the commits
        self.first_failure: BaseException | None = None

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        delivery = await super().send(topic, *args, **kwargs)
        delivery.add_done_callback(lambda fut: self._delivered(topic, fut))
        return delivery

    def _delivered(self, topic: str, delivery: Any) -> None:
        if delivery.cancelled():
            failure: BaseException | None = RecordsNotDelivered("cancelled by the producer")
        else:
            failure = delivery.exception()
        if failure is None:
            return
        self.failed_deliveries += 1
        if self.first_failure is None:
            self.first_failure = failure
        PRODUCE_FAILURES.labels(topic).inc()
        log.error("a record to %s was not delivered: %r; offsets will not be committed past it",
                  topic, failure)  # fmt: skip


def is_broker_failure(exc: BaseException) -> bool:
    """A failure of the broker or the producer, not of the event being processed."""
    # Faust's producer re-raises a KafkaError of ``send`` as its own ProducerSendError
    return isinstance(exc, KafkaError | ProducerSendError | RecordsNotDelivered)


async def on_agent_error(agent: Any, exc: BaseException) -> bool:
    """A broker failure escaping an agent crashes the app; True when it did.

    Why: a send that raises at once (aiokafka gave up waiting for a topic's metadata, the
    producer is closed) escapes the agent's per-event catch-all, which is for bad events.
    Faust's own handler commits at once and restarts the actor past the event whose outputs were
    not written. Crashing instead stops the commits (``GuardedConsumer._commit`` commits nothing
    after a crash), the worker exits, and its restart redoes the event.
    """
    if not is_broker_failure(exc):
        return False
    if not agent.app.crashed:
        log.critical("agent %s: broker failure %r; stopping the worker to redo its work",
                     agent.name, exc)  # fmt: skip
        await agent.app.crash(exc)
    return True


def undelivered(app: Any) -> RecordsNotDelivered | None:
    """The error to crash with when ``app``'s producer failed a delivery, else None."""
    producer = app.producer
    failed = getattr(producer, "failed_deliveries", 0)
    if not failed:
        return None
    return RecordsNotDelivered(
        f"{failed} record(s) not delivered (first: {producer.first_failure!r}); committing "
        "would lose them, so the worker stops and its restart redoes the work from the last "
        "commit"
    )


def install(app: Any) -> None:
    """Make ``app`` build a :class:`GuardedProducer` (before its producer is first used)."""
    transport = app.transport
    if not issubclass(transport.Producer, GuardedProducer):
        transport.Producer = GuardedProducer


def guard_agents(app: Any) -> None:
    """Put :func:`on_agent_error` in front of every agent's ``on_error`` handler.

    Once, after the stages registered their agents: one place instead of an argument on each
    ``@app.agent``. Faust keeps the handler as ``Agent._on_error``; its default, the app's
    ``_on_agent_error``, commits, and still runs for every error that is not the broker's.
    """
    for agent in app.agents.values():
        previous = agent._on_error
        if getattr(previous, "guarded", False):
            continue
        agent._on_error = _guarded_handler(previous)


def _guarded_handler(previous: Any) -> Any:
    async def handler(agent: Any, exc: BaseException) -> None:
        if not await on_agent_error(agent, exc) and previous is not None:
            await previous(agent, exc)

    handler.guarded = True  # type: ignore[attr-defined]
    return handler
