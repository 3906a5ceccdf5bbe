"""Conversation state operations: dedupe, bounded memory, quotas, one request in flight."""

from __future__ import annotations

from streams import state as st
from streams.addressing import outbound_id_for, reply_target, request_id_for

DAY = 24 * 3600 * 1000


def test_dedupe_within_ttl_and_forgets_after():
    s = st.new_state()
    assert not st.is_duplicate(s, "wamid.A", now_ms=1_000, ttl_ms=DAY)
    assert st.is_duplicate(s, "wamid.A", now_ms=2_000, ttl_ms=DAY)
    assert not st.is_duplicate(s, "wamid.A", now_ms=1_000 + DAY + 1, ttl_ms=DAY)


def test_seen_ids_are_bounded_keeping_the_newest():
    s = st.new_state()
    for i in range(st.SEEN_LIMIT + 50):
        st.is_duplicate(s, f"m{i}", now_ms=i, ttl_ms=DAY)
    assert len(s["seen"]) == st.SEEN_LIMIT
    assert "m0" not in s["seen"] and f"m{st.SEEN_LIMIT + 49}" in s["seen"]


def test_idle_conversation_starts_fresh():
    s = st.new_state()
    s["session_id"] = "sess"
    s["updated_at"] = 0
    assert st.load(s, now_ms=10, idle_ttl_ms=100)["session_id"] == "sess"
    assert st.load(s, now_ms=101, idle_ttl_ms=100)["session_id"] is None


def test_history_is_bounded_to_the_last_turns():
    s = st.new_state()
    for i in range(10):
        st.add_turns(s, f"q{i}", f"a{i}", limit_turns=3)
    assert s["turns"] == [
        ["user", "q7"],
        ["assistant", "a7"],
        ["user", "q8"],
        ["assistant", "a8"],
        ["user", "q9"],
        ["assistant", "a9"],
    ]


def test_user_quota_sliding_minute():
    s = st.new_state()
    assert all(st.within_user_quota(s, "u", now_ms=i, per_minute=3) for i in range(3))
    assert not st.within_user_quota(s, "u", now_ms=10, per_minute=3)
    assert st.within_user_quota(s, "other", now_ms=10, per_minute=3)  # per sender
    assert st.within_user_quota(s, "u", now_ms=60_001, per_minute=3)


def test_finish_request_is_idempotent_and_clears_pending():
    s = st.new_state()
    s["pending"] = "r1"
    assert st.finish_request(s, "r1", 42)
    assert s["pending"] is None and s["answered"]["r1"] == 42
    assert not st.finish_request(s, "r1", 42)


def test_reset_keeps_nothing_of_the_session():
    s = st.new_state()
    s.update(session_id="x", parent_message_id=3, turns=[["user", "q"]], queue=[{"r": 1}])
    st.reset_session(s)
    assert (s["session_id"], s["parent_message_id"], s["turns"], s["queue"]) == (None, None, [], [])


def test_ids_are_deterministic_and_tenant_scoped():
    assert request_id_for("acme", "wamid.1") == request_id_for("acme", "wamid.1")
    assert request_id_for("acme", "wamid.1") != request_id_for("globex", "wamid.1")
    assert request_id_for("acme", "wamid.1") != request_id_for("acme", "wamid.1", "help")
    assert outbound_id_for("r", 2) == "r:2"


def test_reply_target_prefers_group_then_phone_then_bsuid():
    group = {"chat_type": "group", "group_id": "G1", "sender_phone": "1", "sender_id": "1"}
    assert reply_target(group) == ("G1", "group")
    assert reply_target({"chat_type": "direct", "sender_phone": "155", "sender_id": "155"}) == (
        "155",
        "phone",
    )
    bsuid = {
        "chat_type": "direct",
        "sender_phone": None,
        "sender_bsuid": "US.1",
        "sender_id": "US.1",
    }
    assert reply_target(bsuid) == ("US.1", "bsuid")


def test_a_loaded_state_is_private_so_a_failed_event_leaves_no_trace():
    """The memory store returns the dict it holds: the handlers' in-place changes (dedupe mark,
    quota window, queue, history, bot message ids) must not reach it until the state is written.
    Before, a question that failed after its dedupe mark looked like a duplicate when retried."""
    import copy

    stored = st.new_state()
    stored["updated_at"] = 1_000
    st.is_duplicate(stored, "wamid.A", now_ms=1_000, ttl_ms=60_000)
    st.add_turns(stored, "q", "a", limit_turns=5)
    stored["queue"].append({"request_id": "r1"})
    st.within_user_quota(stored, "u1", now_ms=1_000, per_minute=5)
    before = copy.deepcopy(stored)

    state = st.load(stored, now_ms=2_000, idle_ttl_ms=60_000)
    assert state == stored
    assert not st.is_duplicate(state, "wamid.B", now_ms=2_000, ttl_ms=60_000)
    st.add_turns(state, "q2", "a2", limit_turns=5)
    state["queue"].append({"request_id": "r2"})
    state["queue"].pop(0)
    st.within_user_quota(state, "u1", now_ms=2_000, per_minute=5)
    st.remember_bot_message(state, "wamid.bot", "r1")
    st.finish_request(state, "r1", 7)
    assert stored == before
    # and the event that failed is no duplicate when it comes again
    again = st.load(stored, now_ms=3_000, idle_ttl_ms=60_000)
    assert not st.is_duplicate(again, "wamid.B", now_ms=3_000, ttl_ms=60_000)
