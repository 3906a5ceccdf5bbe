"""Feedback forwarding when the configuration database stays down past the retries."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

import streams.db_retry
from answers.feedback import FeedbackForwarder
from onyx_wa.metrics import DB_RETRIES, FEEDBACK_FORWARDED
from onyx_wa.settings import load_settings
from streams.app import StageContext


class DatabaseDown:
    def __init__(self) -> None:
        self.calls = 0

    async def bot(self, phone_number_id: str) -> None:
        self.calls += 1
        raise OperationalError("SELECT bots", {}, ConnectionRefusedError(111, "refused"))


class NoOnyx:
    def onyx_backend(self, bot):  # pragma: no cover - reaching it is the failure
        raise AssertionError("Onyx must not be called without the bot")


EVENT = {
    "feedback_id": "fb-1",
    "tenant_id": "acme",
    "phone_number_id": "106540352242922",
    "onyx_message_id": 7,
    "is_positive": True,
    "text": None,
}


async def test_feedback_is_given_up_with_its_own_outcome_after_the_retries(monkeypatch, caplog):
    monkeypatch.setattr(streams.db_retry, "DB_RETRY_BACKOFF_S", (0.01, 0.01, 0.01))
    config = DatabaseDown()
    ctx = StageContext(load_settings(), topics=None, resources={"config": config})  # type: ignore[arg-type]
    ctx.resources["answer_service"] = NoOnyx()
    retries = DB_RETRIES.labels("feedback")._value.get()
    dropped = FEEDBACK_FORWARDED.labels("database_error")._value.get()
    assert await FeedbackForwarder(ctx).forward(dict(EVENT)) == "database_error"
    assert config.calls == 4  # three retries after the first try
    assert DB_RETRIES.labels("feedback")._value.get() == retries + 3
    assert FEEDBACK_FORWARDED.labels("database_error")._value.get() == dropped + 1
    assert "feedback for tenant acme dropped: the database is still failing" in caplog.text


async def test_a_bug_in_the_lookup_is_not_retried(monkeypatch):
    class Broken:
        calls = 0

        async def bot(self, phone_number_id: str) -> None:
            Broken.calls += 1
            raise KeyError("not a database error")

    ctx = StageContext(load_settings(), topics=None, resources={"config": Broken()})  # type: ignore[arg-type]
    with pytest.raises(KeyError):  # it reaches the agent's error handling at once
        await FeedbackForwarder(ctx).forward(dict(EVENT))
    assert Broken.calls == 1
