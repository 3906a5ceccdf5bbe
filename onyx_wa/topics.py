"""Every Kafka topic name in one place, with the key each one is partitioned by.

Other modules never spell a topic name: they ask :func:`topic_names` so that a prefix (tests,
replays into a sandbox, several deployments on one cluster) applies everywhere at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    """A topic's base name, what its records are, and what its key is."""

    name: str
    schema: str  # Avro record name in schemas/, "" for internal Faust topics
    key: str
    compacted: bool = False


RAW = TopicSpec("wa.webhook.raw", "RawWebhook", "delivery id (one record per POST)")
UNROUTED = TopicSpec("wa.webhook.unrouted", "RawWebhook", "delivery id; numbers no bot owns")
INBOUND = TopicSpec("wa.inbound", "InboundMessage", "tenant:chat")
STATUSES = TopicSpec("wa.statuses", "StatusUpdate", "tenant:phone_number_id")
CLASSIFIED = TopicSpec("wa.classified", "ClassifiedMessage", "tenant:chat")
INVALID = TopicSpec("wa.invalid", "InvalidEvent", "delivery id")
ANSWER_REQUESTS = TopicSpec("onyx.answer.requests", "AnswerRequest", "tenant:chat")
ANSWER_RESULTS = TopicSpec("onyx.answer.results", "AnswerResult", "tenant:chat")
OUTBOUND = TopicSpec("wa.outbound", "OutboundMessage", "tenant:phone_number_id")
OUTBOUND_RESULTS = TopicSpec(
    "wa.outbound.results", "OutboundResult", "tenant:chat (so conversation state sees its wamids)"
)
OUTBOUND_DLQ = TopicSpec("wa.outbound.dlq", "OutboundResult", "tenant:phone_number_id")
FEEDBACK = TopicSpec("wa.feedback", "Feedback", "tenant:chat")
FORGET = TopicSpec(
    "wa.forget", "ForgetRequest", "tenant:chat (co-partitioned: the chat's owner tombstones it)"
)

ALL: tuple[TopicSpec, ...] = (
    RAW,
    UNROUTED,
    INBOUND,
    STATUSES,
    CLASSIFIED,
    INVALID,
    ANSWER_REQUESTS,
    ANSWER_RESULTS,
    OUTBOUND,
    OUTBOUND_RESULTS,
    OUTBOUND_DLQ,
    FEEDBACK,
    FORGET,
)

# Retention classes (docs/privacy.md): raw webhook bodies, forget requests, everything else.
RAW_TOPICS: tuple[TopicSpec, ...] = (RAW, UNROUTED)
SHORT_TOPICS: tuple[TopicSpec, ...] = (FORGET,)


def full_name(spec: TopicSpec, prefix: str = "") -> str:
    """The topic name on the cluster: ``<prefix>.<name>`` or just ``<name>``."""
    return f"{prefix}.{spec.name}" if prefix else spec.name


def topic_names(prefix: str = "") -> dict[str, str]:
    """Base name → cluster name for every topic, e.g. for creating them all before start."""
    return {spec.name: full_name(spec, prefix) for spec in ALL}
