"""Analytics: record → fact mapping, idempotent upserts in any order (SQLite and PostgreSQL), the
dashboard figures on a known data set, the JSON API with tenant isolation over a real socket,
and the agent end to end through the broker, replayed without double counting.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import func, select

from analytics.facts import (
    NO_REQUEST_YET,
    UserHasher,
    day_of,
    feedback_fact,
    is_unanswered,
    kind_of,
    outcome_of,
    request_fact,
    result_fact,
)
from analytics.queries import percentile, tenant_analytics
from analytics.store import FactBatch, write_batch
from onyx_wa.settings import load_settings
from store.models import FeedbackFact, QuestionFact

SECRET = b"k" * 32
HASH = UserHasher(SECRET)
PNID = "1555000111"


def ms(text: str) -> int:
    """``2026-03-01T10:00`` (UTC) → epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def request(
    rid: str,
    *,
    tenant: str = "acme",
    sender: str = "15550001",
    chat: str | None = None,
    question: str = "How do I reset my password?",
    at: str = "2026-03-01T10:00",
    group: bool = False,
) -> dict[str, Any]:
    chat = chat or (f"group-{sender}" if group else sender)
    return {
        "request_id": rid,
        "tenant_id": tenant,
        "phone_number_id": PNID,
        "chat_id": chat,
        "chat_type": "group" if group else "direct",
        "recipient": chat,
        "recipient_kind": "group" if group else "phone",
        "question_message_id": f"wamid.{rid}",
        "sender_id": sender,
        "question": question,
        "history": [],
        "answer_backend": "local",
        "onyx_chat_session_id": None,
        "onyx_parent_message_id": None,
        "persona_id": None,
        "document_sets": [],
        "source_types": [],
        "tags": [],
        "time_cutoff_days": None,
        "linked_user_email": None,
        "language": None,
        "show_sources": True,
        "created_at": ms(at),
    }


def source(n: int) -> dict[str, Any]:
    return {
        "number": n,
        "document_id": f"doc-{n}",
        "title": f"Doc {n}",
        "link": None,
        "source_type": "file",
        "updated_at": None,
        "blurb": None,
    }


def result(
    req: dict[str, Any],
    *,
    status: str = "ok",
    cites: int = 1,
    latency: int = 100,
    answer: str = "Here is how [[1]](x).",
    error: str | None = None,
) -> dict[str, Any]:
    finished = req["created_at"] + latency + 50
    return {
        "request_id": req["request_id"],
        "tenant_id": req["tenant_id"],
        "phone_number_id": req["phone_number_id"],
        "chat_id": req["chat_id"],
        "chat_type": req["chat_type"],
        "recipient": req["recipient"],
        "recipient_kind": req["recipient_kind"],
        "question_message_id": req["question_message_id"],
        "status": status,
        "answer": answer if status == "ok" else "",
        "citations": [source(i + 1) for i in range(cites)] if status == "ok" else [],
        "top_documents": [source(i + 1) for i in range(cites)] if status == "ok" else [],
        "onyx_message_id": None,
        "onyx_chat_session_id": None,
        "latency_ms": latency,
        "error_code": error,
        "error_message": f"{error}: detail" if error else None,
        "show_sources": True,
        "language": None,
        "finished_at": finished,
    }


def feedback(
    fid: str,
    req: dict[str, Any] | None,
    *,
    up: bool,
    sender: str | None = None,
    at: str = "2026-03-01T12:00",
    tenant: str = "acme",
) -> dict[str, Any]:
    return {
        "feedback_id": fid,
        "tenant_id": req["tenant_id"] if req else tenant,
        "phone_number_id": PNID,
        "chat_id": sender or (req["sender_id"] if req else "x"),
        "sender_id": sender or (req["sender_id"] if req else "x"),
        "request_id": req["request_id"] if req else None,
        "onyx_message_id": None,
        "onyx_chat_session_id": None,
        "is_positive": up,
        "text": None,
        "source": "button",
        "at": ms(at),
    }


def fact(record: dict[str, Any], hasher: UserHasher = HASH) -> Any:
    mapper = {"request": request_fact, "result": result_fact, "feedback": feedback_fact}
    return mapper[kind_of(record)](record, hasher)  # type: ignore[index]


async def apply(sessions: Any, records: list[dict[str, Any]], batch_size: int = 500) -> None:
    for start in range(0, len(records), batch_size):
        batch = FactBatch()
        batch.extend(fact(r) for r in records[start : start + batch_size])
        await write_batch(sessions, batch)


async def snapshot(sessions: Any) -> tuple[list[tuple], list[tuple]]:
    async with sessions() as session:
        q = (await session.execute(select(QuestionFact.__table__).order_by("request_id"))).all()
        f = (await session.execute(select(FeedbackFact.__table__).order_by("feedback_id"))).all()
    return [tuple(r) for r in q], [tuple(r) for r in f]


# --- pure mapping -------------------------------------------------------------------------------


def test_user_hash_is_the_projects_keyed_pseudonym_and_never_the_phone(tmp_path) -> None:
    from store.privacy import user_hash

    settings = load_settings(
        hash_secret="s3cret-for-tests", data_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:1"
    )
    hasher = UserHasher.from_settings(settings)
    req = request("r1", sender="15551234567")
    row = request_fact(req, hasher).row()
    assert row["user_hash"] == user_hash("acme", "15551234567", settings)
    assert len(row["user_hash"]) == 64
    assert "15551234567" not in json.dumps(row)
    assert hasher("globex", "15551234567") != row["user_hash"]  # per tenant
    other = UserHasher.from_settings(settings.model_copy(update={"hash_secret": "other"}))
    assert other("acme", "15551234567") != row["user_hash"]  # keyed
    assert "s3cret" not in repr(hasher)


def test_request_maps_to_a_pending_question_on_its_utc_day() -> None:
    req = request("r1", question="  How   do I\nreset it? ", at="2026-03-01T23:59")
    row = request_fact(req, HASH).row()
    assert row["outcome"] == "pending" and row["latency_ms"] is None
    assert row["day"] == "2026-03-01" and row["asked_at"] == ms("2026-03-01T23:59")
    assert row["question"] == "How do I reset it?"
    long = request_fact(request("r2", question="x" * 5000), HASH).row()["question"]
    assert len(long) == 1000
    # decoded Avro gives datetimes, built records ints: the same instant
    as_dt = dict(req, created_at=datetime.fromtimestamp(req["created_at"] / 1000, tz=UTC))
    assert request_fact(as_dt, HASH) == request_fact(req, HASH)


@pytest.mark.parametrize(
    ("kwargs", "outcome"),
    [
        ({"cites": 2}, "ok"),
        ({"cites": 0}, "unanswered"),  # local backend's "I couldn't find that"
        ({"cites": 1, "answer": "   "}, "unanswered"),
        ({"status": "failed", "error": "timeout"}, "failed"),
    ],
)
def test_result_outcome_rule(kwargs: dict[str, Any], outcome: str) -> None:
    res = result(request("r1"), **kwargs)
    assert outcome_of(res) == outcome
    assert is_unanswered(res) == (outcome == "unanswered")
    row = result_fact(res, HASH).row()
    assert row["outcome"] == outcome
    assert row["citations"] == (len(res["citations"]))
    assert row["error_code"] == ("timeout" if outcome == "failed" else None)
    assert row["question"] == NO_REQUEST_YET  # a placeholder until the request is seen
    assert row["asked_at"] == res["finished_at"] - res["latency_ms"]


def test_result_placeholder_user_is_the_chat_only_in_direct_chats() -> None:
    direct = result_fact(result(request("r1", sender="1555")), HASH)
    assert direct.user_hash == HASH("acme", "1555")
    group = result_fact(result(request("r2", sender="1555", group=True)), HASH)
    assert group.user_hash == ""


def test_feedback_and_kinds() -> None:
    req = request("r1")
    row = feedback_fact(feedback("wamid.fb1", req, up=False), HASH).row()
    assert row == {
        "feedback_id": "wamid.fb1",
        "tenant_id": "acme",
        "request_id": "r1",
        "user_hash": HASH("acme", req["sender_id"]),
        "day": "2026-03-01",
        "at": ms("2026-03-01T12:00"),
        "is_positive": False,
        "source": "button",
    }
    assert kind_of(req) == "request"
    assert kind_of(result(req)) == "result"
    assert kind_of(feedback("f", req, up=True)) == "feedback"
    assert kind_of({"something": 1}) is None
    assert day_of(ms("2026-12-31T23:59")) == "2026-12-31"


def test_percentile_matches_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7], 0.95) == 7
    assert percentile([100, 200, 300, 400, 500], 0.5) == 300
    assert percentile([100, 200, 300, 400, 500], 0.95) == 480
    assert percentile([400, 500], 0.5) == 450


def test_batch_folds_per_key_like_the_database() -> None:
    early = request("r1", at="2026-03-01T10:00")
    late = request("r1", at="2026-03-02T10:00")
    batch = FactBatch()
    batch.extend(fact(r) for r in (late, early, late, result(early), result(early)))
    assert len(batch) == 2
    assert batch.requests["r1"].day == "2026-03-01"


# --- idempotent upserts (SQLite and PostgreSQL) -------------------------------------------------


def conversation(tenant: str = "acme") -> list[dict[str, Any]]:
    a = request("c1", tenant=tenant, sender="1001", at="2026-03-01T10:00")
    b = request("c2", tenant=tenant, sender="1002", at="2026-03-01T11:00", group=True)
    c = request("c3", tenant=tenant, sender="1003", at="2026-03-02T09:00")
    return [
        a,
        b,
        c,
        result(a, cites=2, latency=120),
        result(b, cites=0, latency=80),
        result(c, status="failed", error="timeout", latency=30000),
        feedback("wamid.f1", a, up=True, at="2026-03-01T10:05"),
        feedback("wamid.f2", b, up=False, sender="1002", at="2026-03-01T11:05"),
    ]


async def test_replay_and_any_order_give_the_same_rows(each_store) -> None:
    sessions = each_store.sessions
    records = conversation()
    await apply(sessions, records)
    first = await snapshot(sessions)
    assert len(first[0]) == 3 and len(first[1]) == 2
    await apply(sessions, records)  # a replay: nothing changes
    assert await snapshot(sessions) == first
    await apply(sessions, list(reversed(records)), batch_size=1)  # results before requests
    assert await snapshot(sessions) == first
    await apply(sessions, records + records)  # duplicates inside one batch
    assert await snapshot(sessions) == first


async def test_result_before_request_converges(each_store) -> None:
    sessions = each_store.sessions
    req = request("early", sender="1777", group=True, question="Where is the VPN guide?")
    res = result(req, cites=0, latency=250)
    await apply(sessions, [res])
    (row,) = (await snapshot(sessions))[0]
    cols = QuestionFact.__table__.c.keys()
    placeholder = dict(zip(cols, row, strict=True))
    assert placeholder["outcome"] == "unanswered" and placeholder["question"] == NO_REQUEST_YET
    assert placeholder["user_hash"] == ""  # a group: the sender is only in the request
    await apply(sessions, [req])
    (row,) = (await snapshot(sessions))[0]
    done = dict(zip(cols, row, strict=True))
    assert done["outcome"] == "unanswered"  # the request never resets the outcome
    assert done["question"] == "Where is the VPN guide?"
    assert done["user_hash"] == HASH("acme", "1777")
    assert done["asked_at"] == req["created_at"] and done["day"] == "2026-03-01"
    assert done["latency_ms"] == 250 and done["answered_at"] == res["finished_at"]


async def test_a_rerun_of_the_conversation_stage_does_not_move_the_question(each_store) -> None:
    sessions = each_store.sessions
    req = request("r1", at="2026-03-01T23:59")
    await apply(sessions, [req, result(req)])
    rerun = dict(req, created_at=ms("2026-03-05T08:00"))  # same request id, a later re-run
    await apply(sessions, [rerun])
    (row,) = (await snapshot(sessions))[0]
    values = dict(zip(QuestionFact.__table__.c.keys(), row, strict=True))
    assert values["day"] == "2026-03-01" and values["outcome"] == "ok"


async def test_feedback_duplicates_do_not_count_twice(each_store) -> None:
    sessions = each_store.sessions
    req = request("r1")
    no_request = dict(feedback("wamid.f1", req, up=True), request_id=None)
    await apply(sessions, [no_request, no_request])
    await apply(sessions, [feedback("wamid.f1", req, up=True)])  # learns its request
    await apply(sessions, [no_request])  # and does not forget it
    (row,) = (await snapshot(sessions))[1]
    values = dict(zip(FeedbackFact.__table__.c.keys(), row, strict=True))
    assert values["request_id"] == "r1" and values["is_positive"] is True


# --- forgotten users ----------------------------------------------------------------------------


async def test_a_replay_does_not_bring_back_a_forgotten_users_facts(each_store, tmp_path) -> None:
    """/forget (or the admin's delete) deleted the user's facts; the topics still hold their
    events. Re-applying those events writes nothing of that user, everyone else's facts are
    re-created as before, and what the user does after the forget counts again."""
    from store.models import ForgottenUser
    from store.privacy import forget_user_rows, user_hashes

    settings = load_settings(
        hash_secret="forget-secret", data_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:1"
    )
    hasher = UserHasher.from_settings(settings)
    sessions = each_store.sessions

    async def feed(records: list[dict[str, Any]], batch_size: int = 500) -> None:
        for start in range(0, len(records), batch_size):
            batch = FactBatch()
            batch.extend(fact(r, hasher) for r in records[start : start + batch_size])
            await write_batch(sessions, batch)

    async def rows_of(user: str) -> tuple[int, int]:
        hashes = user_hashes("acme", user, settings)
        async with sessions() as session:
            q = await session.scalar(select(func.count()).where(QuestionFact.user_hash.in_(hashes)))
            f = await session.scalar(select(func.count()).where(FeedbackFact.user_hash.in_(hashes)))
        return int(q or 0), int(f or 0)

    ana = request("a1", sender="2001", at="2026-03-01T10:00")
    ana_late = request("a2", sender="2001", at="2026-03-01T23:00")  # answered after the forget
    bo = request("b1", sender="2002", at="2026-03-01T11:00")
    old = [
        ana, ana_late, bo,
        result(ana), result(bo, cites=0),
        feedback("wamid.fa", ana, up=True, at="2026-03-01T10:05"),
        feedback("wamid.fb", bo, up=False, at="2026-03-01T11:05"),
    ]  # fmt: skip
    await feed(old)
    assert await rows_of("2001") == (2, 1) and await rows_of("2002") == (1, 1)
    bo_rows = [r for part in await snapshot(sessions) for r in part if "b1" in r]

    forgot_at = ms("2026-03-01T23:30")
    report = await forget_user_rows(sessions, "acme", "2001", settings=settings, at_ms=forgot_at)
    assert (report.question_facts, report.feedback_facts) == (2, 1)
    assert await rows_of("2001") == (0, 0)
    # the answer of the question in flight at the forget arrives afterwards
    in_flight = result(ana_late, latency=3_600_000)  # started before, finished after the forget
    assert in_flight["finished_at"] > forgot_at
    # an old request the answer stage ran again (it was republished): answered after the forget
    rerun = dict(result(ana, latency=20), finished_at=forgot_at + 60_000)
    await feed([in_flight])
    await feed([rerun])

    # the replay: the old events again, as one batch, reversed one by one, and duplicated
    await feed(old)
    await feed(list(reversed(old)), batch_size=1)
    await feed(old + old)
    assert await rows_of("2001") == (0, 0)
    assert [r for part in await snapshot(sessions) for r in part if "b1" in r] == bo_rows

    # the user comes back: their new question and feedback count
    again = request("a3", sender="2001", at="2026-03-02T09:00")
    await feed([again, feedback("wamid.fa3", again, up=True, at="2026-03-02T09:01")])
    await feed([result(again, status="failed", error="onyx_unavailable")])
    assert await rows_of("2001") == (1, 1)
    async with sessions() as session:
        outcome = await session.scalar(select(QuestionFact.outcome).where(
            QuestionFact.request_id == "a3"))  # fmt: skip
    assert outcome == "failed"  # its answer updates the row the new question created

    # a repeated forget keeps the latest time, never an earlier one
    await forget_user_rows(sessions, "acme", "2001", settings=settings, at_ms=forgot_at - 1000)
    async with sessions() as session:
        times = set(await session.scalars(select(ForgottenUser.forgotten_at)))
    assert times == {forgot_at}
    assert await rows_of("2001") == (0, 0)  # the second forget deleted the new rows
    await feed([again])  # a replay of a3: asked after the recorded forget time, it counts
    assert await rows_of("2001") == (1, 0)


async def test_a_forget_waits_for_an_analytics_batch_of_its_tenant(each_store, tmp_path) -> None:
    """A batch holds its tenants' forget lock until it commits, so a forget cannot delete between
    the batch's "not forgotten" check and its write (PostgreSQL: advisory locks; SQLite: the
    database's write lock)."""
    from store.privacy import forget_user_rows, lock_tenant_forgets

    settings = load_settings(
        hash_secret="forget-secret", data_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:1"
    )
    sessions = each_store.sessions
    async with sessions() as held, held.begin():
        await lock_tenant_forgets(held, ["acme"], shared=True)
        forget = asyncio.create_task(forget_user_rows(sessions, "acme", "2001", settings=settings))
        await asyncio.sleep(0.5)
        assert not forget.done(), "the forget did not wait for the batch's transaction"
    await asyncio.wait_for(forget, 10)


# --- the figures --------------------------------------------------------------------------------


def known_data_set() -> list[dict[str, Any]]:
    r1 = request("q1", sender="A", at="2026-03-01T08:00")
    r2 = request("q2", sender="B", at="2026-03-01T09:00")
    r3 = request("q3", sender="A", question="What is the VPN?", at="2026-03-01T10:00")
    r4 = request("q4", sender="C", at="2026-03-01T11:00")
    r5 = request("q5", sender="A", question="what is  the vpn? ", at="2026-03-02T08:00")
    r6 = request("q6", sender="D", at="2026-03-02T09:00")  # no result yet: pending
    r7 = request("q7", sender="B", question="Where is the cafeteria?", at="2026-03-02T10:00")
    g1 = request("g1", tenant="globex", sender="A", at="2026-03-01T08:00")
    return [
        r1, r2, r3, r4, r5, r6, r7, g1,
        result(r1, cites=2, latency=100),
        result(r2, cites=1, latency=300),
        result(r3, cites=0, latency=200),
        result(r4, status="failed", error="timeout", latency=60000),
        result(r5, cites=0, latency=400),
        result(r7, cites=0, latency=500),
        result(g1, cites=0, latency=9),
        feedback("fb1", r1, up=True, at="2026-03-01T08:01"),
        feedback("fb2", r2, up=False, at="2026-03-01T09:01"),
        feedback("fb3", r2, up=True, at="2026-03-01T09:02"),  # B changed their mind
        feedback("fb4", r4, up=False, at="2026-03-01T11:01"),
        feedback("fb5", None, up=False, sender="A", at="2026-03-02T08:30"),
        feedback("gfb", g1, up=False, at="2026-03-01T08:01"),
    ]  # fmt: skip


async def test_figures_on_a_known_data_set(each_store) -> None:
    sessions = each_store.sessions
    await apply(sessions, known_data_set())
    await apply(sessions, list(reversed(known_data_set())), batch_size=3)  # replayed, reordered
    got = await tenant_analytics(sessions, "acme", date(2026, 3, 1), date(2026, 3, 3))
    assert (got.first_day, got.last_day) == ("2026-03-01", "2026-03-03")
    assert (got.questions, got.answered, got.unanswered, got.failed, got.pending) == (7, 2, 3, 1, 1)
    assert got.active_users == 4
    assert (got.latency.median_ms, got.latency.p95_ms) == (300, 480)
    assert (got.feedback_up, got.feedback_down, got.feedback_ratio) == (2, 2, 0.5)
    d1, d2, d3 = got.days
    assert (d1.day, d1.questions, d1.answered, d1.unanswered, d1.failed) == (
        "2026-03-01",
        4,
        2,
        1,
        1,
    )
    assert (d1.active_users, d1.latency.median_ms, d1.latency.p95_ms) == (3, 200, 290)
    assert (d1.feedback_up, d1.feedback_down) == (2, 1)
    assert (d2.questions, d2.unanswered, d2.pending, d2.active_users) == (3, 2, 1, 3)
    assert (d2.latency.median_ms, d2.latency.p95_ms, d2.feedback_down) == (450, 495, 1)
    assert (d3.day, d3.questions, d3.latency.median_ms, d3.active_users) == (
        "2026-03-03",
        0,
        None,
        0,
    )
    top = [(q.question, q.count) for q in got.top_unanswered]
    assert top == [("What is the VPN?", 2), ("Where is the cafeteria?", 1)]
    assert got.top_unanswered[0].last_asked_at == ms("2026-03-02T08:00")
    one_day = await tenant_analytics(sessions, "acme", date(2026, 3, 2), date(2026, 3, 2))
    assert (one_day.questions, one_day.active_users, one_day.feedback_ratio) == (3, 3, 0.0)
    other = await tenant_analytics(sessions, "globex", date(2026, 3, 1), date(2026, 3, 1))
    assert (other.questions, other.unanswered, other.feedback_down, other.active_users) == (
        1,
        1,
        1,
        1,
    )
    empty = await tenant_analytics(sessions, "nobody", date(2026, 3, 1), date(2026, 3, 1))
    assert empty.questions == 0 and empty.feedback_ratio is None and empty.latency.p95_ms is None


# --- the JSON API -------------------------------------------------------------------------------

RUN = uuid.uuid4().hex[:8]
OP = f"op-{RUN}-analytics-aaaaaaaa"
ACME = f"acme-{RUN}-analytics-bbbbbbbb"
GLOBEX = f"globex-{RUN}-analytics-cccccc"
TOKENS = f"{OP}=operator@ops,{ACME}=tenant:acme@ann,{GLOBEX}=tenant:globex@gil"


@pytest.fixture
async def api(each_store) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    from admin.app import AdminContext, create_app
    from admin.auth import TokenAuth
    from analytics.api import ROUTES
    from onyx_wa.broker import free_port

    await apply(each_store.sessions, known_data_set())
    context = AdminContext(
        sessions=each_store.sessions, box=each_store.box, auth=TokenAuth.from_setting(TOKENS)
    )
    runner = web.AppRunner(create_app(context, extra_routes=ROUTES), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        try:
            yield f"http://127.0.0.1:{port}", http
        finally:
            await runner.cleanup()


async def get(api: Any, path: str, token: str | None) -> tuple[int, Any]:
    base, http = api
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(base + path, headers=headers) as reply:
        return reply.status, await reply.json()


PATH = "/api/v1/tenants/{}/analytics?from=2026-03-01&to=2026-03-03"


async def test_api_figures_and_tenant_isolation(api) -> None:
    status, body = await get(api, PATH.format("acme"), OP)
    assert status == 200, body
    assert (body["tenant_id"], body["from"], body["to"]) == ("acme", "2026-03-01", "2026-03-03")
    totals = body["totals"]
    assert (totals["questions"], totals["answered"], totals["unanswered"]) == (7, 2, 3)
    assert (totals["failed"], totals["pending"], totals["active_users"]) == (1, 1, 4)
    assert totals["latency"] == {"median_ms": 300.0, "p95_ms": 480.0}
    assert totals["feedback_ratio"] == 0.5
    assert [d["day"] for d in body["days"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert body["top_unanswered"][0]["question"] == "What is the VPN?"
    assert body["top_unanswered"][0]["last_asked_at"].startswith("2026-03-02T08:00:00")
    assert "user_hash" not in json.dumps(body)
    # a tenant admin: their own tenant yes, another tenant is indistinguishable from none
    assert (await get(api, PATH.format("acme"), ACME))[1] == body
    status, other = await get(api, PATH.format("acme"), GLOBEX)
    assert status == 404
    status, unknown = await get(api, PATH.format("nosuch"), GLOBEX)
    assert status == 404 and other["error"]["message"].replace("acme", "X") == unknown["error"][
        "message"
    ].replace("nosuch", "X")
    assert (await get(api, PATH.format("globex"), GLOBEX))[1]["totals"]["questions"] == 1
    assert (await get(api, PATH.format("nosuch"), OP))[0] == 404  # operator typo: not zeros
    assert (await get(api, PATH.format("acme"), None))[0] == 401


async def test_api_validates_the_range(api) -> None:
    base = "/api/v1/tenants/acme/analytics"
    for query in ("?from=2026-3-1", "?from=yesterday", "?from=2026-03-05&to=2026-03-01",
                  "?from=2020-01-01&to=2026-01-01"):  # fmt: skip
        status, body = await get(api, base + query, OP)
        assert status == 400, (query, body)
    status, body = await get(api, base, OP)  # default: the last 30 days
    assert status == 200 and len(body["days"]) == 30
    assert body["to"] == datetime.now(UTC).date().isoformat()
    assert (await get(api, "/api/v1/tenants/a%2Fb/analytics", OP))[0] == 404


async def test_openapi_lists_the_analytics_route(api) -> None:
    from openapi_spec_validator import validate

    status, doc = await get(api, "/openapi.json", None)
    assert status == 200
    validate(doc)
    op = doc["paths"]["/api/v1/tenants/{tenant_id}/analytics"]["get"]
    assert op["operationId"] == "getTenantAnalytics"
    assert {p["name"] for p in op["parameters"]} == {"tenant_id", "from", "to"}
    assert {"200", "401", "404", "400"} <= set(op["responses"])
    assert {"name": "analytics"} in doc["tags"]


def test_admin_serves_analytics_and_the_worker_runs_it_by_default() -> None:
    import inspect

    from admin import app as admin_app
    from onyx_wa.cli import worker
    from streams.app import ROLES

    assert "analytics" in ROLES
    assert "ANALYTICS_ROUTES" in inspect.getsource(admin_app.start_admin)
    default = inspect.signature(worker).parameters["role"].default.default
    assert set(default) == set(ROLES)


# --- the agent, end to end through the broker ---------------------------------------------------


@pytest.mark.timeout(150)
async def test_agent_materializes_and_a_replay_does_not_double_count(kafka, store, tmp_path):
    from onyx_wa import topics as t
    from onyx_wa.kafka import ensure_pipeline_topics, start_producer
    from schemas.codec import get_codec
    from streams.worker import Worker

    settings = kafka.settings(
        data_dir=tmp_path, database_url=store.db.url, encryption_key=store.key, log_level="WARNING"
    )
    await ensure_pipeline_topics(settings)
    codec = get_codec()
    records = known_data_set()

    async def produce(batch: list[dict[str, Any]]) -> None:
        producer = await start_producer(settings)
        try:
            for record in batch:
                kind = kind_of(record)
                spec, schema = {
                    "request": (t.ANSWER_REQUESTS, "AnswerRequest"),
                    "result": (t.ANSWER_RESULTS, "AnswerResult"),
                    "feedback": (t.FEEDBACK, "Feedback"),
                }[kind]  # type: ignore[index]
                await producer.send(
                    t.full_name(spec, settings.topic_prefix),
                    codec.encode(schema, record),
                    key=f"{record['tenant_id']}:{record['chat_id']}".encode(),
                )
            # a record that is not Avro at all: skipped, never stalls the partition
            await producer.send(
                t.full_name(t.ANSWER_RESULTS, settings.topic_prefix), b"garbage", key=b"acme:A"
            )
            await producer.flush()
        finally:
            await producer.stop()

    async def count(model: Any, **where: Any) -> int:
        async with store.sessions() as session:
            stmt = select(func.count()).select_from(model)
            for name, value in where.items():
                stmt = stmt.where(getattr(model, name) == value)
            return int(await session.scalar(stmt) or 0)

    async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await predicate():
            assert time.monotonic() < deadline, "the analytics agent did not catch up"
            await asyncio.sleep(0.2)

    await produce(records)
    worker = Worker(settings, roles=["analytics"])
    try:
        await worker.start()
        await worker.wait_ready(timeout_s=60)

        async def all_in() -> bool:
            return (
                await count(QuestionFact) == 8
                and await count(FeedbackFact) == 6
                and await count(QuestionFact, outcome="pending") == 1
            )

        await wait_for(all_in)
        figures = await tenant_analytics(store.sessions, "acme", date(2026, 3, 1), date(2026, 3, 3))
        assert (figures.questions, figures.answered, figures.unanswered) == (7, 2, 3)
        assert (figures.failed, figures.pending, figures.feedback_ratio) == (1, 1, 0.5)
        before = await snapshot(store.sessions)

        # the replay, then one new question as a marker that the replay was consumed
        marker_req = request("marker", sender="E", at="2026-03-03T08:00")
        await produce([*records, marker_req, result(marker_req, cites=1)])

        async def marker_answered() -> bool:
            return await count(QuestionFact, request_id="marker", outcome="ok") == 1

        await wait_for(marker_answered)
        await asyncio.sleep(1.5)  # a straggling batch of the replay would land by now
        after = await snapshot(store.sessions)
        assert [r for r in after[0] if r[0] != "marker"] == before[0]
        assert after[1] == before[1]
        again = await tenant_analytics(store.sessions, "acme", date(2026, 3, 1), date(2026, 3, 3))
        assert again.questions == figures.questions + 1 and again.answered == figures.answered + 1
        assert again.feedback_up == figures.feedback_up
    finally:
        await worker.stop()
