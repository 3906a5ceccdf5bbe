"""In-memory directory of enabled bots, so webhook requests do no database query.

Why: every webhook POST needs its bot's app secret and every GET its verify token; a query per
request would tie ingress latency to the database. The snapshot is reloaded only when the config
version moved, which is checked with one primary-key read at most every ``ttl_s`` seconds. Unknown
numbers are answered from the snapshot too; an unknown number also triggers that version check
when the last one is more than ``miss_check_s`` (1 s) old, so a bot added a moment ago is routed
within a second rather than a TTL (its first messages went to the unrouted topic before), while
junk traffic costs the database at most one primary-key read per second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from store.repo import BotConfig, BotRepository

log = logging.getLogger(__name__)


class BotDirectory:
    """A snapshot of enabled bots keyed by phone_number_id, plus the verify-token set."""

    def __init__(
        self,
        bots: BotRepository,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        miss_check_s: float = 1.0,
    ) -> None:
        self.bots = bots
        self.ttl_s = ttl_s
        self.miss_check_s = miss_check_s
        self._clock = clock
        self._by_pnid: dict[str, BotConfig] = {}
        self._verify_tokens: frozenset[str] = frozenset()
        self.version: int | None = None
        self._checked_at: float | None = None
        self._lock = asyncio.Lock()
        self.reloads = 0

    async def refresh(self, force: bool = False, *, within_s: float | None = None) -> bool:
        """Reload if the config version changed (or ``force``); True when a reload happened.

        If the database is down and a snapshot exists, the old snapshot keeps serving (webhooks
        must keep flowing) and the next check is retried after ``ttl_s``.
        """
        if not force and not self._due(within_s):
            return False
        async with self._lock:
            if not force and not self._due(within_s):  # another task refreshed meanwhile
                return False
            self._checked_at = self._clock()
            try:
                if not force and self.version is not None:
                    if await self.bots.config_version() == self.version:
                        return False
                version, bots = await self.bots.snapshot()
            except Exception:
                if self.version is None:
                    raise
                log.warning(
                    "bot directory refresh failed; serving the previous snapshot", exc_info=True
                )
                return False
            self._by_pnid = {bot.phone_number_id: bot for bot in bots}
            self._verify_tokens = frozenset(bot.verify_token for bot in bots)
            self.version = version
            self.reloads += 1
            return True

    def _due(self, within_s: float | None = None) -> bool:
        limit = self.ttl_s if within_s is None else within_s
        return self._checked_at is None or self._clock() - self._checked_at >= limit

    async def get(self, phone_number_id: str) -> BotConfig | None:
        """The enabled bot for this number, or None."""
        await self.refresh()
        bot = self._by_pnid.get(phone_number_id)
        recheck = bot is None and self.miss_check_s < self.ttl_s  # else the TTL covers it
        if recheck and await self.refresh(within_s=self.miss_check_s):
            bot = self._by_pnid.get(phone_number_id)  # added since the last check
        return bot

    async def verify_tokens(self) -> set[str]:
        """Verify tokens of all enabled bots (for Meta's GET subscription handshake)."""
        await self.refresh()
        return set(self._verify_tokens)

    async def all(self) -> list[BotConfig]:
        """Every enabled bot in the snapshot."""
        await self.refresh()
        return list(self._by_pnid.values())
