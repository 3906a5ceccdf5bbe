"""WhatsApp error codes, by what to do about them (branch on ``error.code``, not HTTP status).

retry with backoff · pause the bot and alert (no blind retry) · permanent: DLQ with the reason.

Beyond the brief's lists, a few documented codes are placed where they obviously belong,
because the default for an unknown 4xx code (permanent) would be wrong for them:
permission, capability and registration problems (3, 10, 200-299, 131005, 131037, 131042,
133010) are *pause*: they fail every send of the number, so dead-lettering message after
message would only drain the queue; 133004 (server temporarily unavailable) is *retry*;
131051 (unsupported message type), 131021 (recipient is the sender), 131050 (user opted out of
marketing) and 131053 (media upload error) are *permanent*.
"""

from __future__ import annotations

import random
from enum import Enum


class LeftForRedelivery(Exception):
    """The message is left unacknowledged: its partition's next owner handles it.

    Raised where acknowledging would lose the message (this worker lost the partition in the
    middle of reconciling it) or where a Kafka record it wrote was not acknowledged.
    """


class ErrorAction(Enum):
    RETRY = "retry"
    PAUSE = "stop"
    PERMANENT = "permanent"


RETRY_CODES = frozenset({130429, 131056, 4, 80007, 131016, 131000, 1, 2, 131057, 133004})
PAUSE_CODES = frozenset({131048, 131049, 368, 131031, 190, 3, 10, 131005, 131037, 131042, 133010})
PERMANENT_CODES = frozenset(
    {131026, 131047, 100, 131008, 131009, 131030, 131051, 131021, 131050, 131053}
)
TEMPLATE_CODES = range(132000, 133000)
PERMISSION_CODES = range(200, 300)
RETRYABLE_HTTP = frozenset({408, 425, 429})
PAIR_RATE = 131056
MAX_BACKOFF_S = 300.0


def classify(code: int | None, http_status: int | None = None) -> ErrorAction:
    """What to do with a failed call: Meta's code decides; the HTTP status only without one."""
    if code in RETRY_CODES:
        return ErrorAction.RETRY
    if code in PAUSE_CODES or (code is not None and code in PERMISSION_CODES):
        return ErrorAction.PAUSE
    if code in PERMANENT_CODES or (code is not None and code in TEMPLATE_CODES):
        return ErrorAction.PERMANENT
    if code is None and http_status is None:
        return ErrorAction.RETRY  # no answer at all: timeout or connection reset
    if http_status is not None and (http_status >= 500 or http_status in RETRYABLE_HTTP):
        return ErrorAction.RETRY  # a server error or throttling: may succeed later
    # an unknown code (also on a failed status, which has no HTTP status) or a plain 4xx
    return ErrorAction.PERMANENT


def backoff_s(code: int | None, attempt: int, *, base_s: float = 0.5) -> float:
    """Delay after failed ``attempt`` (1-based), capped at :data:`MAX_BACKOFF_S`.

    131056 (pair rate): 4^(attempt-1) s — 1, 4, 16, 64 s — as Meta advises (4^n with n from 0),
    deterministic because the limit is per recipient and jitter buys nothing. Everything else:
    exponential with full jitter, so a fleet of senders hit by the same outage spreads out.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if code == PAIR_RATE:
        return min(MAX_BACKOFF_S, 4.0 ** (attempt - 1))
    return random.uniform(0, min(MAX_BACKOFF_S, base_s * 2 ** (attempt - 1)))  # noqa: S311
