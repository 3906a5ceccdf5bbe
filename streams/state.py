"""Per-conversation state, as a plain JSON-able dict, and the pure operations on it.

Why plain dicts and pure functions: the state lives in a changelog-backed Faust table (JSON
values), must be rebuilt identically by replay, and is easiest to test without Kafka. Every
collection is bounded so that 100,000 live conversations fit in memory.
"""

from __future__ import annotations

from typing import Any

SEEN_LIMIT = 200  # message ids remembered per chat for dedupe (plus the TTL)
BOT_MSGS_LIMIT = 50
ANSWERED_LIMIT = 50
QUEUE_LIMIT = 20

State = dict[str, Any]


def new_state() -> State:
    return {
        "session_id": None,  # Onyx chat session, reused for follow-ups
        "parent_message_id": None,  # last Onyx message id in that session
        "turns": [],  # [[role, text], ...] bounded by settings.history_turns
        "seen": {},  # message_id -> received ms (dedupe)
        # offset of the last wa.inbound record applied (a chat lives in one partition): a record
        # at or below it is a reprocessing after a crash, not a duplicate webhook
        "in_offset": -1,
        "bot_msgs": {},  # wamid -> request_id (maps reactions/replies to answers)
        "answered": {},  # request_id -> onyx message id (or None)
        "pending": None,  # request_id in flight (one per chat)
        "pending_question": "",  # its question, for the history once answered
        "queue": [],  # AnswerRequest records waiting, in order
        "lang": None,
        "sources_on": True,
        "opted_out": False,
        "last_user_at": 0,  # ms: start of the 24 h customer-service window
        "asked": {},  # sender_id -> [ms, ...] recent questions (per-user quota)
        "updated_at": 0,
    }


def load(value: State | None, *, now_ms: int, idle_ttl_ms: int) -> State:
    """The chat's state, fresh if absent or idle for longer than the TTL.

    A private copy, its containers included: the memory store hands back the very dict it
    holds, and the handlers change the containers in place (the dedupe mark, the queue, the
    quota window). An event that fails half-way must leave the stored state as it was, or its
    dedupe mark alone would make its retry or replay look like a duplicate. Every change is one
    level deep, so copying each container is enough.
    """
    if not value or now_ms - int(value.get("updated_at", 0)) > idle_ttl_ms:
        return new_state()
    merged = new_state()
    for name, item in value.items():
        merged[name] = item.copy() if isinstance(item, dict | list) else item
    return merged


def is_duplicate(state: State, message_id: str, *, now_ms: int, ttl_ms: int) -> bool:
    """Remember ``message_id``; True if it was already seen within the TTL."""
    seen: dict[str, int] = state["seen"]
    at = seen.get(message_id)
    if at is not None and now_ms - at <= ttl_ms:
        return True
    seen[message_id] = now_ms
    if len(seen) > SEEN_LIMIT:
        for old in sorted(seen, key=seen.__getitem__)[: len(seen) - SEEN_LIMIT]:
            del seen[old]
    return False


def _bounded_put(mapping: dict[str, Any], key: str, value: Any, limit: int) -> None:
    mapping.pop(key, None)
    mapping[key] = value
    while len(mapping) > limit:
        del mapping[next(iter(mapping))]


def remember_bot_message(state: State, wamid: str, request_id: str) -> None:
    _bounded_put(state["bot_msgs"], wamid, request_id, BOT_MSGS_LIMIT)


def add_turns(state: State, question: str, answer: str, limit_turns: int) -> None:
    turns: list[list[str]] = state["turns"]
    turns.extend([["user", question], ["assistant", answer]])
    if limit_turns <= 0:
        turns.clear()
    else:
        del turns[: max(0, len(turns) - 2 * limit_turns)]


def reset_session(state: State) -> None:
    """``/reset``: a new Onyx session and no history (pending work is left to finish)."""
    state["session_id"] = None
    state["parent_message_id"] = None
    state["turns"] = []
    state["queue"] = []


def within_user_quota(state: State, sender_id: str, *, now_ms: int, per_minute: int) -> bool:
    """Sliding one-minute window of questions per sender; records the question when allowed."""
    recent = [ms for ms in state["asked"].get(sender_id, []) if now_ms - ms < 60_000]
    if len(recent) >= per_minute:
        state["asked"][sender_id] = recent
        return False
    recent.append(now_ms)
    state["asked"][sender_id] = recent
    return True


def finish_request(state: State, request_id: str, onyx_message_id: int | None) -> bool:
    """Mark ``request_id`` answered; False if it was already (a duplicate result)."""
    if request_id in state["answered"]:
        return False
    _bounded_put(state["answered"], request_id, onyx_message_id, ANSWERED_LIMIT)
    if state["pending"] == request_id:
        state["pending"] = None
    return True
