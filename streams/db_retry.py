"""Work that failed on the database is tried again in place, not dropped or parked.

Why: a database outage is not a bad event. The conversation stage would otherwise park the
question in ``wa.invalid`` and the answer stage send the polite failure; waiting a little and
trying again delays the question instead (``onyx_wa_db_retries_total`` counts each retry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from onyx_wa.metrics import DB_RETRIES
from store.db import is_transient_db_error

log = logging.getLogger(__name__)

T = TypeVar("T")

# waits between tries of work that failed on the database (about two minutes in all)
DB_RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 30.0, 30.0)


async def retry_db_errors(stage: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, tried again ``DB_RETRY_BACKOFF_S`` apart while it fails on the database
    (:func:`store.db.is_transient_db_error`). Any other error, and the last try's, is raised.
    ``attempt`` must start from scratch each time: nothing of a failed try may carry over."""
    for delay in DB_RETRY_BACKOFF_S:
        try:
            return await attempt()
        except Exception as exc:
            if not is_transient_db_error(exc):
                raise
            DB_RETRIES.labels(stage).inc()
            log.warning("%s stage: database error (%r), retrying in %.1f s", stage, exc, delay)
            await asyncio.sleep(delay)
    return await attempt()
