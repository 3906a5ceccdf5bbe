"""Pure streams logic: normalizing webhook bodies and classifying messages."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import CodecError, get_codec
from sim import meta
from streams.classify import ChatRule, classify
from streams.commands import parse_command
from streams.normalize import normalize_delivery
from streams.preprocess import Preprocessor
from streams.replies import keys, reply_text

PNID = "106540352242922"
TENANTS = {PNID: "acme"}


def normalize(doc_or_bytes):
    body = doc_or_bytes if isinstance(doc_or_bytes, bytes) else json.dumps(doc_or_bytes).encode()
    return normalize_delivery(body, delivery_id="d1", received_at_ms=1, tenant_for=TENANTS)


def one(msg: dict, contacts=None) -> dict:
    out = normalize(meta.notification(PNID, messages=[msg], contacts=contacts or []))
    assert not out.invalid, out.invalid
    [record] = out.messages
    get_codec().encode("InboundMessage", record)  # every record is a valid Avro record
    return record


def base(kind: str, body: dict, **extra) -> dict:
    return {
        "from": "15551230000",
        "id": meta.new_wamid(),
        "timestamp": "1732500000",
        "type": kind,
        kind: body,
        **extra,
    }


@pytest.mark.parametrize(
    ("msg", "expect"),
    [
        (
            base("text", {"body": "hi"}, context={"id": "wamid.P", "forwarded": True}),
            {"text": "hi", "context_message_id": "wamid.P", "forwarded": True},
        ),
        (
            base("image", {"id": "m1", "caption": "what is this?", "mime_type": "image/jpeg"}),
            {"text": "what is this?", "media": {"media_id": "m1", "kind": "image"}},
        ),
        (base("audio", {"id": "m2", "voice": True}), {"media": {"kind": "audio", "voice": True}}),
        (base("document", {"id": "m3", "filename": "a.pdf"}), {"media": {"filename": "a.pdf"}}),
        (
            base(
                "interactive",
                {"type": "button_reply", "button_reply": {"id": "fb:acme:r:up", "title": "👍"}},
            ),
            {"interactive_id": "fb:acme:r:up", "text": "👍"},
        ),
        (
            base("interactive", {"type": "list_reply", "list_reply": {"id": "l1", "title": "Row"}}),
            {"interactive_id": "l1", "text": "Row"},
        ),
        (
            base("button", {"text": "Stop", "payload": "STOP"}),
            {"interactive_id": "STOP", "text": "Stop"},
        ),
        (
            base("reaction", {"message_id": "wamid.B", "emoji": ""}),
            {"reaction_emoji": "", "target_message_id": "wamid.B"},
        ),
        (
            base(
                "edit", {"original_message_id": "wamid.E", "message": {"text": {"body": "fixed"}}}
            ),
            {"target_message_id": "wamid.E", "text": "fixed"},
        ),
        (base("revoke", {"original_message_id": "wamid.R"}), {"target_message_id": "wamid.R"}),
        (base("location", {"latitude": 1, "longitude": 2, "name": "HQ"}), {"text": "HQ"}),
        (
            base("text", {"body": "in a group"}, group_id="G1"),
            {"chat_id": "G1", "chat_type": "group", "group_id": "G1"},
        ),
    ],
)
def test_message_types_normalize(msg, expect):
    record = one(msg)
    for field, value in expect.items():
        if isinstance(value, dict):
            for k, v in value.items():
                assert record[field][k] == v
        else:
            assert record[field] == value


def test_bsuid_users_are_keyed_on_the_bsuid():
    msg = base("text", {"body": "hi"})
    del msg["from"]
    msg["from_user_id"] = "US.134912"
    record = one(
        msg, contacts=[{"profile": {"name": "Ana", "username": "ana"}, "user_id": "US.134912"}]
    )
    assert (record["sender_id"], record["chat_id"], record["sender_phone"]) == (
        "US.134912",
        "US.134912",
        None,
    )
    assert record["sender_name"] == "Ana" and record["sender_username"] == "ana"


def test_statuses_and_unsupported_errors():
    doc = meta.notification(
        PNID,
        messages=[base("unsupported", {}, errors=[{"code": 131051, "title": "unknown"}])],
        statuses=[
            meta.status("wamid.S", "failed", "1555", errors=[{"code": 131047, "title": "window"}]),
            meta.status("wamid.T", "sent", "1555", callback_data="req-9:1"),
        ],
    )
    out = normalize(doc)
    assert out.messages[0]["errors"][0]["code"] == 131051
    assert out.statuses[0]["errors"][0]["code"] == 131047
    # the send's biz_opaque_callback_data (the egress's outbound id) is carried, else None
    assert [s["callback_data"] for s in out.statuses] == [None, "req-9:1"]
    for status in out.statuses:
        get_codec().encode("StatusUpdate", status)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1,2]",
        b'{"entry": "x"}',
        json.dumps({"entry": [{"changes": [{"value": 5}]}]}).encode(),
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser's recursion limit
    ],
    ids=["text", "list", "entry-not-list", "value-not-dict", "too-deep"],
)
def test_garbage_becomes_invalid_events(body):
    out = normalize(body)
    assert out.messages == [] and len(out.invalid) == 1
    get_codec().encode("InvalidEvent", out.invalid[0])


def test_lone_surrogates_are_replaced_so_every_event_still_encodes():
    """A JSON ``\\udXXX`` escape with no pair cannot be UTF-8: it becomes ``?`` (the raw topic
    keeps the original body); a valid pair (an emoji) is untouched."""
    msg = base("text", {"body": "x"})
    contacts = [{"profile": {"name": "Ana"}, "wa_id": "15551230000"}]
    body = json.dumps(meta.notification(PNID, messages=[msg], contacts=contacts))
    body = body.replace('"x"', '"a\\ud800b \\ud83d\\ude00"').replace('"Ana"', '"\\udfffAna"')
    out = normalize(body.encode())
    assert not out.invalid
    [record] = out.messages
    assert record["text"] == "a?b \U0001f600"
    assert record["sender_name"] == "?Ana"
    get_codec().encode("InboundMessage", record)


class Collected:
    """The stage's two outlets, encoding what they get as the real topics would."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.sent: list[tuple[str, bytes, dict]] = []
        self.invalid: list[tuple[bytes, dict]] = []
        self.fail_on = fail_on

    async def send(self, spec, key: bytes, record: dict) -> None:
        if spec.schema == self.fail_on:
            raise CodecError(f"cannot encode {spec.schema}: (injected)")
        get_codec().encode(spec.schema, record)
        self.sent.append((spec.name, key, record))

    async def send_invalid(self, key: bytes, record: dict) -> None:
        get_codec().encode("InvalidEvent", record)
        self.invalid.append((key, record))


def raw_delivery(body: bytes, delivery_id: str = "d-1") -> bytes:
    return get_codec().encode(
        "RawWebhook",
        {"delivery_id": delivery_id, "received_at": 1732500000000, "body": body,
         "headers": {}, "tenant_ids": ["acme"], "phone_number_ids": [PNID], "routed": True},
    )  # fmt: skip


def question_body() -> bytes:
    return json.dumps(meta.notification(PNID, messages=[base("text", {"body": "hi?"})])).encode()


async def test_preprocess_sends_each_normalized_event():
    out = Collected()
    outcome = await Preprocessor(out.send, out.send_invalid, "raw").handle(
        raw_delivery(question_body())
    )
    assert outcome == "ok" and [name for name, _, _ in out.sent] == ["wa.inbound"]
    assert out.invalid == []


async def test_preprocess_parks_bytes_that_are_not_a_raw_record():
    out = Collected()
    assert await Preprocessor(out.send, out.send_invalid, "raw").handle(b"\x00garbage") == "invalid"
    [(key, record)] = out.invalid
    assert key == b"" and record["raw"] == b"\x00garbage" and record["source_topic"] == "raw"


async def test_preprocess_parks_a_delivery_that_normalization_cannot_handle(monkeypatch):
    """The catch-all: a failure nobody foresaw goes to wa.invalid with the raw record, keyed by
    its delivery id, and the stage goes on (the next record is processed)."""
    import streams.preprocess as stage

    def explode(*args, **kwargs):
        raise KeyError("surprise")

    out = Collected()
    preprocessor = Preprocessor(out.send, out.send_invalid, "raw")
    value = raw_delivery(question_body(), "d-poison")
    with monkeypatch.context() as patch:
        patch.setattr(stage, "normalize_delivery", explode)
        assert await preprocessor.handle(value) == "invalid"
    [(key, record)] = out.invalid
    assert key == b"d-poison" and record["raw"] == value
    assert record["reason"] == "cannot normalize: KeyError('surprise')"
    assert await preprocessor.handle(raw_delivery(question_body(), "d-next")) == "ok"


async def test_preprocess_parks_an_event_avro_cannot_carry():
    out = Collected(fail_on="InboundMessage")
    outcome = await Preprocessor(out.send, out.send_invalid, "raw").handle(
        raw_delivery(question_body())
    )
    assert outcome == "ok" and out.sent == []
    [(key, record)] = out.invalid
    assert key.startswith(b"acme:") and "injected" in record["reason"]
    assert json.loads(record["raw"])["text"] == "hi?"  # the normalized event, as JSON


def test_one_bad_message_does_not_lose_the_good_ones():
    good = base("text", {"body": "fine"})
    bad = {"type": "text", "timestamp": "x"}  # no id, bad timestamp
    out = normalize(meta.notification(PNID, messages=[bad, good, "nonsense"]))
    assert [m["text"] for m in out.messages] == ["fine"]
    assert len(out.invalid) == 2


def test_unknown_numbers_are_reported_not_processed():
    out = normalize(meta.notification("999", messages=[base("text", {"body": "x"})]))
    assert out.messages == [] and out.unrouted_numbers == ["999"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(
        ["id", "timestamp", "type", "from", "text", "context", "group_id", "image", "errors"]
    ),
    value=json_values,
)
def test_fuzzed_messages_never_raise_and_always_encode(field, value):
    msg = base("text", {"body": "x"})
    msg[field] = value
    out = normalize(
        meta.notification(
            PNID, messages=[msg], statuses=[{"id": value, "status": "sent", "timestamp": "1"}]
        )
    )
    for record in out.messages:
        get_codec().encode("InboundMessage", record)
    for record in out.statuses:
        get_codec().encode("StatusUpdate", record)
    for record in out.invalid:
        get_codec().encode("InvalidEvent", record)


def message(text="", **overrides) -> dict:
    record = one(base("text", {"body": text or "x"}))
    record.update(text=text, **overrides)
    return record


OPEN = ChatRule()


@pytest.mark.parametrize(
    ("text", "kind", "extra"),
    [
        (
            "How many vacation days do I get?",
            "question",
            {"question": "How many vacation days do I get?"},
        ),
        ("/help", "command", {"command": "help"}),
        ("  /Reset", "command", {"command": "reset"}),
        ("/sources off", "command", {"command": "sources", "command_arg": "off"}),
        ("/lang es", "command", {"command": "lang", "command_arg": "es"}),
        ("/stop", "command", {"command": "stop"}),
        ("/forget", "command", {"command": "forget"}),
        ("/dance", "command", {"command": "help"}),
        ("hi", "greeting", {}),
        ("Good morning!", "greeting", {}),
        ("hola", "greeting", {}),
        ("thanks!", "thanks", {}),
        ("شكرا", "thanks", {}),
        ("hi, how do I reset my VPN?", "question", {}),
        ("a" * 60, "spam", {}),
    ],
)
def test_text_classification(text, kind, extra):
    result = classify(message(text), bot_message_ids=set(), chat_rule=OPEN)
    assert result["kind"] == kind
    for k, v in extra.items():
        assert result[k] == v
    get_codec().encode("ClassifiedMessage", result)


def test_feedback_from_buttons_and_reactions():
    tap = message("👍", interactive_id="fb:acme:req-1:up")
    assert classify(tap, bot_message_ids=set(), chat_rule=OPEN)["feedback_target"] == "req-1"
    other_tenant = message("👍", interactive_id="fb:globex:req-1:up")
    assert classify(other_tenant, bot_message_ids=set(), chat_rule=OPEN)["kind"] == "ignored"
    react = message(
        "", message_type="reaction", reaction_emoji="👎🏽", target_message_id="wamid.BOT"
    )
    result = classify(react, bot_message_ids={"wamid.BOT"}, chat_rule=OPEN)
    assert result["kind"] == "feedback" and result["feedback_positive"] is False
    elsewhere = message(
        "", message_type="reaction", reaction_emoji="👍", target_message_id="wamid.USER"
    )
    assert classify(elsewhere, bot_message_ids={"wamid.BOT"}, chat_rule=OPEN)["kind"] == "reaction"


def test_media_classification():
    caption = message(
        "what is this?", message_type="image", media={"media_id": "1", "kind": "image"}
    )
    assert (
        classify(caption, bot_message_ids=set(), chat_rule=OPEN)["question"]
        == "[image attached] what is this?"
    )
    voice = message("", message_type="audio", media={"media_id": "1", "kind": "audio"})
    assert classify(voice, bot_message_ids=set(), chat_rule=OPEN)["reason"] == "voice"
    assert (
        classify(message("", message_type="sticker"), bot_message_ids=set(), chat_rule=OPEN)["kind"]
        == "media"
    )


def test_group_rules():
    group = {"chat_type": "group", "group_id": "G", "chat_id": "G"}
    tag_only = ChatRule(respond_tag_only=True)
    plain = message("what are the office hours?", **group)
    assert (
        classify(plain, bot_message_ids=set(), chat_rule=tag_only, bot_phone="15550001111")["kind"]
        == "ignored"
    )
    tagged = message("@15550001111 what are the office hours?", **group)
    result = classify(tagged, bot_message_ids=set(), chat_rule=tag_only, bot_phone="15550001111")
    assert result["kind"] == "question" and result["question"] == "what are the office hours?"
    reply = message("and on weekends?", context_message_id="wamid.BOT", **group)
    assert classify(reply, bot_message_ids={"wamid.BOT"}, chat_rule=tag_only)["kind"] == "question"
    assert (
        classify(plain, bot_message_ids=set(), chat_rule=ChatRule(disabled=True))["reason"]
        == "chat disabled"
    )
    allow = ChatRule(allowed_senders=frozenset({"1999"}))
    assert classify(plain, bot_message_ids=set(), chat_rule=allow)["reason"] == "sender not allowed"


def test_commands_parse_tolerantly():
    assert parse_command("@Acme /reset").name == "reset"
    assert parse_command("/lang xx-invalid-tag").arg is None
    assert parse_command("not a command") is None


def test_every_reply_exists_in_english_and_falls_back():
    for key in keys():
        assert reply_text(key, "en", language="es")
        assert reply_text(key, "zz", language="es") == reply_text(key, "en", language="es")
    assert reply_text("reset", "pt-BR") != reply_text("reset", "en")
