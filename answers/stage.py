"""The answer stage: answer requests → (Onyx or the local backend) → answer results.

Concurrency model: the agent runs many requests at once (``answer_concurrency_per_tenant`` per
tenant, bounded by a semaphore each, so one slow tenant cannot take another's slots), while the
conversation stage guarantees one request in flight per chat — so results stay in order per chat.
Faust commits an offset only once every earlier record of the partition was acked, so a crash
re-runs unfinished requests (at-least-once) and request ids make the re-run harmless downstream.

While an answer is generated, a "read + typing" outbound action is emitted for the question.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import faust

from answers.model import Answer, Turn, answer_to_avro_fields
from onyx_wa import topics as t
from onyx_wa.metrics import ANSWER_ERRORS, ANSWER_LATENCY, STAGE_EVENTS
from streams.addressing import outbound_id_for
from streams.app import StageContext
from streams.db_retry import retry_db_errors

log = logging.getLogger(__name__)
_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class AnswerService:
    """Chooses the backend per bot and runs one request, never raising."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self._local = None
        self._pool = None
        self._slots: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(self.settings.answer_concurrency_per_tenant)
        )

    def local_backend(self) -> Any:
        if self._local is None:
            from answers.local import LocalAnswerBackend, default_corpus_dir

            corpus = Path(self.settings.corpus_dir or default_corpus_dir())
            self._local = LocalAnswerBackend(
                corpus, self.settings.data_dir / "answers-index.sqlite3"
            )
        return self._local

    def onyx_backend(
        self, bot: Any, *, user_id: str | None = None, user_key: str | None = None
    ) -> Any:
        if self._pool is None:
            from answers.onyx_client import OnyxClientPool

            self._pool = OnyxClientPool(
                connect_timeout_s=self.settings.onyx_connect_timeout_s,
                first_byte_timeout_s=self.settings.onyx_first_byte_timeout_s,
                total_timeout_s=self.settings.onyx_total_timeout_s,
                max_retries=self.settings.onyx_max_retries,
            )
        if user_key:
            return self._pool.get(bot.tenant_id, bot.onyx_base_url, user_key, user_id=user_id)
        return self._pool.get(bot.tenant_id, bot.onyx_base_url, bot.onyx_api_key)

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        backend_name = request.get("answer_backend") or "local"
        async with self._slots[request["tenant_id"]]:
            try:
                # the bot and linked-user lookups come before the Onyx call, so a retry on a
                # database error never asks Onyx twice; only after it gives up (about two
                # minutes) does the request get the polite failure
                answer = await retry_db_errors("answers", lambda: self._run(request, backend_name))
            except Exception as exc:  # a backend bug must become a polite failure, not silence
                log.exception("answer backend %s failed", backend_name)
                answer = Answer(
                    text="",
                    sources=[],
                    top_documents=[],
                    onyx_message_id=None,
                    chat_session_id=request.get("onyx_chat_session_id"),
                    latency_ms=int((time.perf_counter() - started) * 1000),
                    error=f"backend_error: {type(exc).__name__}",
                )
        outcome = "failed" if answer.error else "ok"
        ANSWER_LATENCY.labels(backend_name, outcome).observe(time.perf_counter() - started)
        record = result_record(request, answer)
        if record["error_code"]:
            ANSWER_ERRORS.labels(backend_name, metric_code(record["error_code"])).inc()
        return record

    async def _run(self, request: dict[str, Any], backend_name: str) -> Answer:
        history = [Turn(role=t_["role"], text=t_["text"]) for t_ in request.get("history") or []]
        filters: dict[str, Any] = {}
        if request.get("source_types"):
            filters["source_type"] = list(request["source_types"])
        if request.get("tags"):
            filters["tags"] = list(request["tags"])
        if request.get("time_cutoff_days"):
            filters["time_cutoff_days"] = request["time_cutoff_days"]
        kwargs = {
            "history": history,
            "session_id": request.get("onyx_chat_session_id"),
            "persona_id": request.get("persona_id"),
            "document_sets": list(request.get("document_sets") or []),
            "filters": filters,
        }
        if backend_name == "onyx":
            config = self.ctx.resources["config"]
            bot = await config.bot(request["phone_number_id"])
            if bot is None or not bot.onyx_base_url or not bot.onyx_api_key:
                return Answer("", [], [], None, None, 0, error="backend_error: onyx not configured")
            sender = request.get("sender_id")
            user_key = await config.linked_onyx_key(bot, sender) if sender else None
            client = self.onyx_backend(bot, user_id=sender, user_key=user_key)
            return await client.answer(
                request["question"],
                parent_message_id=request.get("onyx_parent_message_id"),
                **kwargs,
            )
        return await self.local_backend().answer(request["question"], **kwargs)

    async def aclose(self) -> None:
        for backend in (self._local, self._pool):
            if backend is not None:
                await backend.aclose()


def metric_code(error_code: str) -> str:
    """The ``code`` label of ``onyx_wa_answer_errors_total``: the result's error code
    (``onyx_unavailable``, ``onyx_auth``, ``backend_error``, ...) when it looks like one, else
    ``backend_error``, so a free-text error can never grow the label set without bound."""
    return error_code if _CODE.fullmatch(error_code) else "backend_error"


def result_record(request: dict[str, Any], answer: Answer) -> dict[str, Any]:
    """The AnswerResult for ``request``; failures carry a code the egress turns into words."""
    fields = answer_to_avro_fields(answer)
    error_code = None
    if answer.error:
        error_code = answer.error.split(":", 1)[0].strip() or "backend_error"
    return {
        "request_id": request["request_id"],
        "tenant_id": request["tenant_id"],
        "phone_number_id": request["phone_number_id"],
        "chat_id": request["chat_id"],
        "chat_type": request["chat_type"],
        "recipient": request["recipient"],
        "recipient_kind": request["recipient_kind"],
        "question_message_id": request["question_message_id"],
        "status": "failed" if answer.error else "ok",
        "answer": fields.get("answer", answer.text) if not answer.error else "",
        "citations": fields.get("citations", []),
        "top_documents": fields.get("top_documents", []),
        "onyx_message_id": fields.get("onyx_message_id"),
        "onyx_chat_session_id": fields.get("onyx_chat_session_id")
        or request.get("onyx_chat_session_id"),
        "latency_ms": int(answer.latency_ms),
        "error_code": error_code,
        "error_message": answer.error,
        "show_sources": request.get("show_sources", True),
        "language": request.get("language"),
        "finished_at": int(time.time() * 1000),
    }


def typing_outbound(request: dict[str, Any]) -> dict[str, Any] | None:
    """Mark the question read and show typing (not supported in groups)."""
    if request.get("chat_type") == "group":
        return None
    import json

    from egress.compose import mark_read

    return {
        "outbound_id": outbound_id_for(request["request_id"], "typing"),
        "request_id": request["request_id"],
        "part_index": 0,
        "part_count": 1,
        "tenant_id": request["tenant_id"],
        "phone_number_id": request["phone_number_id"],
        "chat_id": request["chat_id"],
        "kind": "read_typing",
        "payload_json": json.dumps(mark_read(request["question_message_id"], typing=True)),
        "created_at": int(time.time() * 1000),
    }


def register(app: faust.App, ctx: StageContext) -> None:
    from answers import feedback

    service = AnswerService(ctx)
    ctx.resources["answer_service"] = service
    feedback.register(app, ctx)
    requests = ctx.topics.of(t.ANSWER_REQUESTS)
    results = ctx.topics.of(t.ANSWER_RESULTS)
    outbound = ctx.topics.of(t.OUTBOUND)
    # Faust actors are the worker-wide cap on answers in flight: they must exceed the per-tenant
    # bound, or one worker would answer only ``answer_concurrency_per_tenant`` questions at once
    # across all its tenants. The per-tenant semaphores in AnswerService do the bounding.
    concurrency = max(
        ctx.settings.answer_concurrency_per_worker, ctx.settings.answer_concurrency_per_tenant
    )

    @app.agent(requests, name="answers", concurrency=concurrency)
    async def answers(stream: faust.StreamT) -> None:
        async for event in stream.events():
            request = event.value
            key = event.key
            number_key = f"{request['tenant_id']}:{request['phone_number_id']}".encode()
            typing = typing_outbound(request)
            if typing is not None:
                await outbound.send(key=number_key, value=typing)
            result = await service.answer(request)
            await results.send(key=key, value=result)
            STAGE_EVENTS.labels("answers", result["status"]).inc()
