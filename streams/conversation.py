"""The conversation stage: dedupe, classify, keep per-chat state, emit answer requests.

One agent reads three co-partitioned topics keyed ``tenant:chat`` — inbound messages, answer
results and outbound results — so that everything about one conversation is handled in order by
one partition owner, and the state table's changelog partition always matches the key's.

Per chat, one answer request is in flight at a time; questions arriving meanwhile are queued in
order and released when the result comes back. Local replies (commands, greetings, limits) are
emitted straight to the outbound topic with deterministic ids.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from onyx_wa import topics as t
from onyx_wa.metrics import DUPLICATES, QUOTA_REJECTED, STAGE_EVENTS, STAGE_LATENCY
from schemas.codec import get_codec
from store.db import is_transient_db_error
from streams import state as st
from streams.addressing import reply_target, request_id_for
from streams.app import StageContext, table_options
from streams.classify import classify
from streams.config import ChatSettings, ConfigLookup
from streams.db_retry import retry_db_errors
from streams.expiry import tombstone
from streams.replies import reply_text
from streams.table_writes import TableWriter

log = logging.getLogger(__name__)

FEEDBACK_ACK = "feedback_thanks"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(value: Any) -> int:
    from datetime import datetime

    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value or 0)


class ConversationHandler:
    """Pure-ish handling of one event for one chat; the agent persists state and sends."""

    def __init__(self, ctx: StageContext, config: ConfigLookup) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.config = config
        self.out: list[tuple[t.TopicSpec, bytes, dict[str, Any]]] = []
        self.forget = False  # drop this chat's state (tombstone) instead of saving it
        self.forget_user: str | None = None  # also delete this user's database rows
        self.replay = False  # the inbound record is being reprocessed (see on_inbound)

    # --- helpers -----------------------------------------------------------------------------
    def emit(self, spec: t.TopicSpec, key: str, value: dict[str, Any]) -> None:
        self.out.append((spec, key.encode(), value))

    def local_reply(
        self, message: dict[str, Any], key: str, text_key: str, lang: str | None, **fmt: Any
    ) -> None:
        """A text reply that needs no answer backend, with an id derived from the message."""
        from egress.outbound import text_outbound

        request_id = request_id_for(message["tenant_id"], message["message_id"], text_key)
        recipient, kind = reply_target(message)
        body = reply_text(text_key, lang, **fmt)
        for record in text_outbound(
            request_id=request_id,
            tenant_id=message["tenant_id"],
            phone_number_id=message["phone_number_id"],
            chat_id=message["chat_id"],
            recipient=recipient,
            recipient_kind=kind,
            text=body,
            reply_to=message["message_id"],
        ):
            self.emit(t.OUTBOUND, f"{message['tenant_id']}:{message['phone_number_id']}", record)

    # --- inbound messages --------------------------------------------------------------------
    async def on_inbound(
        self, key: str, message: dict[str, Any], state: st.State, offset: int | None = None
    ) -> None:
        """``offset``: the record's offset on wa.inbound (None when rebuilding from a replay).

        Why the offset: after a kill -9 the state (with this message's dedupe mark) can be on
        the changelog while the outputs it caused are not (they went in another batch), and
        the record is then read again. Only a different record with the same wamid is a
        duplicate webhook; the same record again is reprocessed and its outputs re-emitted
        (their ids are deterministic, so downstream keeps one of each).
        """
        now = _now_ms()
        ttl = int(self.settings.dedupe_ttl_s * 1000)
        self.replay = offset is not None and offset <= state["in_offset"]
        if self.replay:
            STAGE_EVENTS.labels("conversation", "reprocessed").inc()
        elif st.is_duplicate(state, message["message_id"], now_ms=now, ttl_ms=ttl):
            DUPLICATES.labels("conversation").inc()
            return
        if offset is not None and offset > state["in_offset"]:
            state["in_offset"] = offset
        state["last_user_at"] = max(state["last_user_at"], _ms(message.get("sent_at")))
        bot = await self.config.bot(message["phone_number_id"])
        chat = await self.config.chat(bot, message["chat_id"], message["chat_type"] == "group")
        classified = classify(
            message,
            bot_message_ids=state["bot_msgs"],
            chat_rule=chat.rule,
            bot_phone=bot.display_phone_number if bot else None,
            bot_names=bot.names if bot else (),
        )
        self.emit(t.CLASSIFIED, key, classified)
        kind = classified["kind"]
        lang = state["lang"]
        if state["opted_out"] and not (kind == "command" and classified["command"] == "start"):
            return
        if kind == "question":
            await self._question(key, message, classified["question"] or "", state, chat, bot)
        elif kind == "command":
            self._command(key, message, classified, state)
        elif kind == "feedback":
            self._feedback(key, message, classified, state)
        elif kind in ("greeting", "thanks"):
            self.local_reply(message, key, kind, lang)
        elif kind == "media":
            self.local_reply(message, key, f"media_{classified.get('reason') or 'other'}", lang)
        elif kind == "unsupported":
            self.local_reply(message, key, "unsupported", lang)

    async def _question(
        self,
        key: str,
        message: dict[str, Any],
        question: str,
        state: st.State,
        chat: ChatSettings,
        bot: Any,
    ) -> None:
        now = _now_ms()
        # a reprocessed question was counted against the quotas by its first pass
        if not self.replay and not st.within_user_quota(
            state,
            message["sender_id"],
            now_ms=now,
            per_minute=(bot.user_questions_per_minute if bot else None)
            or self.settings.user_questions_per_minute,
        ):
            QUOTA_REJECTED.labels("user").inc()
            self.local_reply(message, key, "quota_user", state["lang"])
            return
        quota = self.ctx.resources.get("quota")
        if quota is not None and not self.replay:
            spent = await quota.over_limit(
                message["tenant_id"],
                now,
                per_minute=getattr(bot, "tenant_questions_per_minute", None)
                or self.settings.tenant_questions_per_minute,
                per_day=getattr(bot, "tenant_questions_per_day", None)
                or self.settings.tenant_questions_per_day,
            )
            if spent is not None:
                QUOTA_REJECTED.labels(f"tenant_{spent}").inc()
                self.local_reply(message, key, f"quota_tenant_{spent}", state["lang"])
                return
        recipient, kind = reply_target(message)
        request = {
            "request_id": request_id_for(message["tenant_id"], message["message_id"]),
            "tenant_id": message["tenant_id"],
            "phone_number_id": message["phone_number_id"],
            "chat_id": message["chat_id"],
            "chat_type": message["chat_type"],
            "recipient": recipient,
            "recipient_kind": kind,
            "question_message_id": message["message_id"],
            "sender_id": message["sender_id"],
            "question": question,
            "history": [],
            "answer_backend": bot.answer_backend if bot else "local",
            "onyx_chat_session_id": None,
            "onyx_parent_message_id": None,
            "persona_id": chat.persona_id,
            "document_sets": list(chat.document_sets),
            "source_types": list(chat.source_types),
            "tags": list(chat.tags),
            "time_cutoff_days": chat.time_cutoff_days,
            "linked_user_email": await self.config.linked_email(bot, message["sender_id"]),
            "language": state["lang"],
            "show_sources": state["sources_on"] and chat.show_sources,
            "created_at": now,
        }
        if request["request_id"] in state["answered"]:
            DUPLICATES.labels("conversation").inc()
            return
        if request["request_id"] == state["pending"]:
            if self.replay:  # its request may never have reached the broker: send it again
                self._send_request(key, request, state)
            else:
                DUPLICATES.labels("conversation").inc()
            return
        if self.replay and any(q["request_id"] == request["request_id"] for q in state["queue"]):
            return  # queued by the first pass: it is sent when its turn comes
        if state["pending"]:
            if len(state["queue"]) < st.QUEUE_LIMIT:
                state["queue"].append(request)
            else:
                self.local_reply(message, key, "quota_user", state["lang"])
            return
        self._send_request(key, request, state)

    def _send_request(self, key: str, request: dict[str, Any], state: st.State) -> None:
        """Fill in the session and history at send time (they change while queued)."""
        request = dict(request)
        request["onyx_chat_session_id"] = state["session_id"]
        request["onyx_parent_message_id"] = state["parent_message_id"]
        request["history"] = (
            [
                {"role": role, "text": text}
                for role, text in state["turns"][-2 * self.settings.history_turns :]
            ]
            if self.settings.history_turns
            else []
        )
        state["pending"] = request["request_id"]
        state["pending_question"] = request["question"]
        self.emit(t.ANSWER_REQUESTS, key, request)

    def _command(
        self, key: str, message: dict[str, Any], classified: dict[str, Any], state: st.State
    ) -> None:
        name, arg = classified["command"], classified.get("command_arg")
        if name == "reset":
            st.reset_session(state)
            self.local_reply(message, key, "reset", state["lang"])
        elif name == "sources":
            state["sources_on"] = (arg or "").lower() != "off"
            self.local_reply(
                message, key, "sources_on" if state["sources_on"] else "sources_off", state["lang"]
            )
        elif name == "lang" and arg:
            state["lang"] = arg.lower()
            self.local_reply(message, key, "lang_set", state["lang"], language=arg.lower())
        elif name == "stop":
            state["opted_out"] = True
            self.local_reply(message, key, "stop", state["lang"])
        elif name == "start":
            state["opted_out"] = False
            self.local_reply(message, key, "start", state["lang"])
        elif name == "forget":
            # The chat's state goes (a tombstone, see the agent), with the user's database rows.
            # In a group the group's state goes too (its history holds the sender's questions),
            # and the sender's own 1:1 chat, on another partition, gets a forget request.
            self.forget = True
            self.forget_user = message["sender_id"]
            if message["chat_type"] == "group":
                self.emit(
                    t.FORGET,
                    f"{message['tenant_id']}:{message['sender_id']}",
                    forget_request(message["tenant_id"], message["sender_id"], source="user"),
                )
            self.local_reply(message, key, "forget", state["lang"])
        else:
            self.local_reply(message, key, "help", state["lang"])

    def _feedback(
        self, key: str, message: dict[str, Any], classified: dict[str, Any], state: st.State
    ) -> None:
        target = classified.get("feedback_target")
        request_id = state["bot_msgs"].get(target, target)
        self.emit(
            t.FEEDBACK,
            key,
            {
                "feedback_id": message["message_id"],
                "tenant_id": message["tenant_id"],
                "phone_number_id": message["phone_number_id"],
                "chat_id": message["chat_id"],
                "sender_id": message["sender_id"],
                "request_id": request_id,
                "onyx_message_id": state["answered"].get(request_id) if request_id else None,
                "onyx_chat_session_id": state["session_id"],
                "is_positive": bool(classified.get("feedback_positive")),
                "text": None,
                "source": "button" if message.get("interactive_id") else "reaction",
                "at": _now_ms(),
            },
        )
        if message.get("interactive_id"):
            self.local_reply(message, key, FEEDBACK_ACK, state["lang"])

    # --- answer results ----------------------------------------------------------------------
    def on_answer(self, key: str, result: dict[str, Any], state: st.State) -> None:
        question = state["pending_question"] if state["pending"] == result["request_id"] else ""
        if not st.finish_request(state, result["request_id"], result.get("onyx_message_id")):
            DUPLICATES.labels("conversation-results").inc()
            return
        if result["status"] == "ok":
            if result.get("onyx_chat_session_id"):
                state["session_id"] = result["onyx_chat_session_id"]
            if result.get("onyx_message_id") is not None:
                state["parent_message_id"] = result["onyx_message_id"]
            st.add_turns(state, question, result.get("answer") or "", self.settings.history_turns)
        if state["pending"] is None and state["queue"]:
            self._send_request(key, state["queue"].pop(0), state)

    def on_outbound_result(self, result: dict[str, Any], state: st.State) -> None:
        if result["status"] == "sent" and result.get("wamid"):
            st.remember_bot_message(state, result["wamid"], result["request_id"])

    def on_forget(self, request: dict[str, Any], state: st.State) -> None:
        """A forget request (admin API, or /forget in a group for the sender's own chat)."""
        self.forget = True


def forget_request(
    tenant_id: str, user_id: str, *, source: str, chat_id: str | None = None
) -> dict[str, Any]:
    """A ForgetRequest record for the chat ``tenant_id:chat_id`` (default: the user's 1:1)."""
    import uuid

    return {
        "forget_id": uuid.uuid4().hex,
        "tenant_id": tenant_id,
        "chat_id": chat_id or user_id,
        "user_id": user_id,
        "source": source,
        "requested_at": _now_ms(),
    }


def register(app: faust.App, ctx: StageContext) -> None:
    settings = ctx.settings
    from onyx_wa.kafka import changelog_topic_configs

    table = app.Table(
        "conversations",
        default=None,
        partitions=settings.partitions,
        key_type=str,  # app defaults: raw keys, JSON values
        extra_topic_configs=changelog_topic_configs(settings),  # tombstones compacted soon
        options=table_options(settings),
    )
    ctx.resources["conversations"] = table
    config = ctx.resources.get("config")
    if "quota" not in ctx.resources and getattr(config, "sessions", None) is not None:
        from streams.quota import TenantQuota

        ctx.resources["quota"] = TenantQuota(config.sessions)
    names = {
        ctx.topics.name(t.INBOUND): "inbound",
        ctx.topics.name(t.ANSWER_RESULTS): "answer",
        ctx.topics.name(t.OUTBOUND_RESULTS): "outbound_result",
        ctx.topics.name(t.FORGET): "forget",
    }
    source = ctx.topics.merged(t.INBOUND, t.ANSWER_RESULTS, t.OUTBOUND_RESULTS, t.FORGET)
    idle_ms = int(settings.conversation_idle_ttl_s * 1000)
    inbound_topic = ctx.topics.name(t.INBOUND)

    @app.timer(settings.conversation_sweep_interval_s, name="conversation-expiry")
    async def expire_idle_conversations() -> None:
        from streams.expiry import expire_idle, owned_partitions

        await expire_idle(
            table,
            now_ms=_now_ms(),
            idle_ms=idle_ms,
            partitions=settings.partitions,
            owned=owned_partitions(app, inbound_topic),
        )

    send = ctx.topics.send
    state_writer = TableWriter(app, table, track_offsets=settings.store == "rocksdb")
    decode = get_codec().decode  # the source is read raw: a corrupt record is an invalid event
    counted = {o: STAGE_EVENTS.labels("conversation", o) for o in set(names.values())}
    stage_latency = STAGE_LATENCY.labels("conversation")

    async def decide(
        config: ConfigLookup, key: str, origin: str, value: dict[str, Any], stored: Any, event: Any
    ) -> tuple[ConversationHandler, st.State]:
        """One event's decisions and the state they leave, retried in place while the
        database fails (config lookups, quotas, forgetting): a database outage is not a bad
        event and must not park questions in ``wa.invalid``. Past the last retry the app
        crashes: the worker commits nothing more and its restart redoes the event."""

        async def attempt() -> tuple[ConversationHandler, st.State]:
            handler = ConversationHandler(ctx, config)
            # a private copy per attempt: a failed attempt leaves no trace (see st.load)
            state = st.load(stored, now_ms=_now_ms(), idle_ttl_ms=idle_ms)
            if origin == "inbound":
                await handler.on_inbound(key, value, state, event.message.offset)
            elif origin == "answer":
                handler.on_answer(key, value, state)
            elif origin == "forget":
                handler.on_forget(value, state)
            else:
                handler.on_outbound_result(value, state)
            if handler.forget_user and getattr(config, "sessions", None) is not None:
                await _forget_rows(ctx, config, value["tenant_id"], handler.forget_user)
            return handler, state

        try:
            return await retry_db_errors("conversation", attempt)
        except Exception as exc:
            if is_transient_db_error(exc):
                log.critical("conversation stage: the database is still failing (%r)", exc)
                await app.crash(exc)
            raise

    @app.agent(source, name="conversation")
    async def conversation(stream: faust.StreamT) -> None:
        config: ConfigLookup = ctx.resources["config"]
        async for event in stream.events():
            started = time.perf_counter()
            key = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            origin = names.get(event.message.topic, "inbound")
            stored = table.get(key)
            if stored is None and origin in ("answer", "outbound_result"):
                # a chat we keep nothing about (forgotten, expired): a late result must not
                # bring its state back
                counted[origin].inc()
                continue
            value: dict[str, Any] | None = None
            try:
                value = decode(event.value)
                handler, state = await decide(config, key, origin, value, stored, event)
            except Exception as exc:  # never stall the partition on one bad event
                if app.crashed:
                    raise  # the database stayed down: redone after the restart, not parked
                tenant, _, chat = key.partition(":")
                log.exception(
                    "conversation stage failed on %s event",
                    origin,
                    extra={
                        "stage": "conversation",
                        "tenant": tenant,
                        "chat": chat,
                        "request_id": _request_id(value),
                    },
                )
                from streams.preprocess import invalid_record

                await send(
                    t.INVALID,
                    key.encode(),
                    invalid_record(
                        "conversation",
                        f"{type(exc).__name__}: {exc}",
                        event.value if isinstance(event.value, bytes) else b"",
                        event.message.topic,
                    ),
                )
                STAGE_EVENTS.labels("conversation", "error").inc()
                continue
            # outputs first, state second: the state (with the dedupe mark) must never be on the
            # changelog without the outputs it caused. A worker stopped between the two (a stop
            # cancels the agent at an await) then reprocesses the event from unchanged state and
            # emits again (ids are deterministic: downstream drops repeats) instead of taking it
            # for a duplicate and dropping it.
            for spec, out_key, record in handler.out:
                # the classified message embeds this very inbound record: reuse its bytes
                embeds = spec is t.CLASSIFIED and record.get("message") is value
                await send(spec, out_key, record, tail=event.value if embeds else None)
            if handler.forget:
                tombstone(table, key, event.message.partition)
                tenant, _, chat = key.partition(":")
                log.info(
                    "conversation forgotten (%s)",
                    "admin" if origin == "forget" else "user",
                    extra={"stage": "conversation", "tenant": tenant, "chat": chat},
                )
            else:
                state["updated_at"] = _now_ms()
                await state_writer.set(key, state, event.message.partition)
            counted[origin].inc()
            stage_latency.observe(time.perf_counter() - started)


def _request_id(value: dict[str, Any] | None) -> str | None:
    """The request id an event belongs to, for log lines."""
    if not value:
        return None
    if value.get("request_id"):
        return str(value["request_id"])
    if value.get("tenant_id") and value.get("message_id"):
        return request_id_for(value["tenant_id"], value["message_id"])
    return None


async def _forget_rows(ctx: StageContext, config: Any, tenant_id: str, user_id: str) -> None:
    """/forget: the user's links and analytics facts; this worker's caches drop them now."""
    from store.privacy import forget_user_rows

    await forget_user_rows(config.sessions, tenant_id, user_id, settings=ctx.settings)
    drop = getattr(config, "forget_user", None)
    if drop is not None:
        drop(user_id)
