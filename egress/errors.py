"""WhatsApp error codes, by what to do about them (branch on ``error.code``, not HTTP status).

retry with backoff · pause the bot and alert (no blind retry) · permanent: DLQ with the reason.
"""

from __future__ import annotations

import random
from enum import Enum


class ErrorAction(Enum):
    RETRY = "retry"
    PAUSE = "stop"
    PERMANENT = "permanent"


RETRY_CODES = frozenset({130429, 131056, 4, 80007, 131016, 131000, 1, 2, 131057})
PAUSE_CODES = frozenset({131048, 131049, 368, 131031, 190})
PERMANENT_CODES = frozenset({131026, 131047, 100, 131008, 131009, 131030, 131051})
PAIR_RATE = 131056
MAX_BACKOFF_S = 300.0


def classify(code: int | None, http_status: int | None = None) -> ErrorAction:
    """What to do with a failed send."""
    if code in RETRY_CODES:
        return ErrorAction.RETRY
    if code in PAUSE_CODES:
        return ErrorAction.PAUSE
    if code in PERMANENT_CODES or (code is not None and 132000 <= code <= 132999):
        return ErrorAction.PERMANENT
    if code is None:
        # no Meta error object: network failure, timeout or a 5xx without JSON
        return (
            ErrorAction.RETRY
            if http_status is None or http_status >= 500
            else ErrorAction.PERMANENT
        )
    return ErrorAction.RETRY if (http_status or 0) >= 500 else ErrorAction.PERMANENT


def backoff_s(code: int | None, attempt: int, *, base_s: float = 0.5) -> float:
    """Delay after failed ``attempt`` (1-based): 4^(n-1) s (1, 4, 16…) for the pair rate limit,
    as Meta advises; exponential with full jitter otherwise."""
    if code == PAIR_RATE:
        return min(MAX_BACKOFF_S, 4.0 ** (attempt - 1))
    return random.uniform(0, min(MAX_BACKOFF_S, base_s * 2 ** (attempt - 1)))  # noqa: S311
