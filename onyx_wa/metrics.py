"""Process-wide Prometheus metrics shared by the pipeline stages.

Why module-level: one worker process registers each metric once in the default registry, and
every stage labels its own series. HTTP apps that may be built several times in one process
(tests) keep private registries instead (see ingress/).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGE_EVENTS = Counter(
    "onyx_wa_stage_events_total", "Events handled per stage and outcome", ["stage", "outcome"]
)
STAGE_LATENCY = Histogram(
    "onyx_wa_stage_latency_seconds",
    "Processing time per event and stage",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DUPLICATES = Counter(
    "onyx_wa_duplicates_total", "Duplicates dropped by idempotent consumers", ["stage"]
)
ANSWER_LATENCY = Histogram(
    "onyx_wa_answer_latency_seconds",
    "Answer backend latency",
    ["backend", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
ANSWER_ERRORS = Counter(
    "onyx_wa_answer_errors_total",
    "Failed answers by backend and error code (the part of Answer.error before the colon)",
    ["backend", "code"],
)
SENDS = Counter("onyx_wa_sends_total", "Graph API sends by result code", ["result", "code"])
THROTTLE_WAIT = Histogram(
    "onyx_wa_throttle_wait_seconds",
    "Time sends waited for the per-number token bucket",
    buckets=(0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
PAUSED_BOTS = Gauge("onyx_wa_paused_bots", "Bots whose sending is paused by a stop-and-alert code")
DLQ = Counter("onyx_wa_dlq_total", "Outbound messages sent to the DLQ", ["code"])
RECONCILED = Counter(
    "onyx_wa_uncertain_sends_total",
    "Sends a crash left without a response, by outcome (confirmed by a status, resent, dlq)",
    ["outcome"],
)
SKIPPED_RECORDS = Counter(
    "onyx_wa_skipped_records_total",
    "Records the Faust consumer skipped (a rebalance race) and read again, by topic",
    ["topic"],
)
DB_RETRIES = Counter(
    "onyx_wa_db_retries_total",
    "Events retried in place because the database failed (a transient error), by stage",
    ["stage"],
)
PRODUCE_FAILURES = Counter(
    "onyx_wa_produce_failures_total",
    "Records a worker's producer could not deliver, by topic; the worker then stops committing"
    " and exits, and its restart redoes the work from the last commit",
    ["topic"],
)
CONSUMER_LOST_RECORDS = Counter(
    "onyx_wa_consumer_lost_records_total",
    "Skipped records that could not be read again (deleted by retention?) and were committed"
    " over, by topic",
    ["topic"],
)
CONVERSATIONS_EXPIRED = Counter(
    "onyx_wa_conversations_expired_total", "Idle conversations dropped from the state table"
)
QUOTA_REJECTED = Counter("onyx_wa_quota_rejected_total", "Questions over quota", ["scope"])
FEEDBACK_FORWARDED = Counter(
    "onyx_wa_feedback_forwarded_total", "Feedback events sent to Onyx, by outcome", ["outcome"]
)
