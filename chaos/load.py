"""A steady load of signed question webhooks, delivered the way Meta delivers them.

Why Meta's behaviour matters here: the pipeline's "nothing lost" promise rests on it. The
ingress answers ``200`` only once the raw event is on the broker; anything else (a ``503`` while
the broker is down, a refused connection while the ingress restarts) and Meta delivers the
webhook again later. So the load generator retries every delivery until it is answered ``200``
(backoff 0.25 s doubling to 4 s, for ``horizon_s``), and with ``copies=3`` it delivers every
webhook three times, as Meta does when it is unsure.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import aiohttp

from sim import meta

QUESTION = "How do I connect to the VPN? (#{n})"
_users = itertools.count(int(time.time()) % 100_000 * 10_000)


@dataclass
class Question:
    wamid: str
    user: str
    body: bytes
    headers: dict[str, str]
    first_sent: float = 0.0
    accepted_at: float | None = None  # first 200 from the ingress (monotonic)
    attempts: int = 0


@dataclass
class MetaLoad:
    """``rate`` questions/s for ``duration_s`` to one bot; every delivery retried until ``200``.

    Each user asks ``per_user`` questions in a row (so chats see queued questions and their
    order matters), users are new for every load (no state left from an earlier scenario).
    """

    http: aiohttp.ClientSession
    url: str
    phone_number_id: str
    app_secret: str
    rate: float
    duration_s: float
    copies: int = 1
    per_user: int = 2
    horizon_s: float = 180.0
    questions: dict[str, Question] = field(default_factory=dict)
    refused: int = 0  # non-200 answers and connection errors, each redelivered
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _question(self, n: int, user: str) -> Question:
        message = meta.text_message(user, QUESTION.format(n=n))
        doc = meta.notification(
            self.phone_number_id, messages=[message], contacts=[meta.contact(user)]
        )
        body = meta.serialise(doc)
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": meta.sign(self.app_secret, body),
        }
        return Question(message["id"], user, body, headers)

    async def run(self) -> None:
        """Offer the load (open loop: a slow ingress does not slow the schedule down), then wait
        until every delivery was accepted or the horizon passed."""
        total = max(1, int(self.rate * self.duration_s))
        start = time.monotonic()
        user = ""
        for n in range(total):
            if n % self.per_user == 0:
                user = f"1{next(_users):010d}"
            question = self._question(n, user)
            self.questions[question.wamid] = question
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            question.first_sent = time.monotonic()
            for copy in range(self.copies):
                self._tasks.append(asyncio.ensure_future(self._deliver(question, copy)))
        await asyncio.gather(*self._tasks)

    async def _deliver(self, question: Question, copy: int) -> None:
        if copy:
            await asyncio.sleep(0.05 * copy)  # the copies arrive close together, not at once
        deadline = time.monotonic() + self.horizon_s
        backoff = 0.25
        while time.monotonic() < deadline:
            question.attempts += 1
            try:
                async with self.http.post(
                    self.url, data=question.body, headers=question.headers
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        if question.accepted_at is None:
                            question.accepted_at = time.monotonic()
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            self.refused += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 4.0)

    @property
    def accepted(self) -> int:
        return sum(1 for q in self.questions.values() if q.accepted_at is not None)
