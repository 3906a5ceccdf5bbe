"""Answer results → outbound messages: ids, threading, extras, failures — all spec-valid."""

from __future__ import annotations

import json

import pytest

from egress.outbound import answer_outbound
from schemas.codec import get_codec
from sim.spec import load_validator


def result(**overrides):
    base = {
        "request_id": "ans-1",
        "tenant_id": "acme",
        "phone_number_id": "106540352242922",
        "chat_id": "15551234567",
        "chat_type": "direct",
        "recipient": "15551234567",
        "recipient_kind": "phone",
        "question_message_id": "wamid.Q",
        "status": "ok",
        "answer": "You get **25** days [[1]](https://i/leave).",
        "citations": [
            {
                "number": i,
                "document_id": f"d{i}",
                "title": f"Doc {i}",
                "link": f"https://i/{i}",
                "source_type": "file",
                "updated_at": None,
                "blurb": None,
            }
            for i in range(1, 8)
        ],
        "show_sources": True,
        "language": None,
    }
    base.update(overrides)
    return base


def payloads(records):
    return [json.loads(r["payload_json"]) for r in records]


def test_answer_then_all_sources_then_feedback_buttons_in_a_direct_chat():
    records = answer_outbound(result(), top_n=5)
    assert [r["outbound_id"] for r in records] == ["ans-1:0", "ans-1:sources", "ans-1:feedback"]
    text, sources, buttons = payloads(records)
    assert text["context"] == {"message_id": "wamid.Q"} and "[1]" in text["text"]["body"]
    assert len(sources["interactive"]["action"]["sections"][0]["rows"]) == 7
    assert buttons["interactive"]["type"] == "button"
    validator = load_validator()
    for payload in (text, sources, buttons):
        assert validator.validate_send(payload) == []
    for record in records:
        get_codec().encode("OutboundMessage", record)


def test_groups_get_text_only():
    records = answer_outbound(
        result(chat_type="group", recipient="120363025246125244", recipient_kind="group"), top_n=5
    )
    assert [r["kind"] for r in records] == ["text"]
    assert payloads(records)[0]["recipient_type"] == "group"


def test_bsuid_users_are_addressed_by_recipient():
    records = answer_outbound(result(recipient="US.1349", recipient_kind="bsuid"), top_n=10)
    for payload in payloads(records):
        assert payload["recipient"] == "US.1349" and "to" not in payload


@pytest.mark.parametrize("lang,expected", [(None, "couldn't reach"), ("es", "no pude")])
def test_a_failed_answer_becomes_a_polite_message(lang, expected):
    [record] = answer_outbound(result(status="failed", answer="", language=lang), top_n=5)
    assert expected in json.loads(record["payload_json"])["text"]["body"]


def test_ids_are_deterministic_so_a_redelivered_result_is_deduplicated():
    assert (
        answer_outbound(result(), top_n=5)[0]["outbound_id"]
        == answer_outbound(result(), top_n=5)[0]["outbound_id"]
    )


def test_sends_carry_their_outbound_id_as_callback_data():
    """Spliced, not re-serialised: the body stays the compose step's bytes plus one field."""
    from egress.stage import with_callback_data

    body = json.dumps({"messaging_product": "whatsapp", "to": "1", "text": {"body": "é}"}})
    spliced = with_callback_data(body, 'req-"1":0')
    assert json.loads(spliced) == {**json.loads(body), "biz_opaque_callback_data": 'req-"1":0'}
    assert with_callback_data(spliced, "other:0") == spliced  # already there: unchanged
    with pytest.raises(ValueError):
        with_callback_data("[1, 2]", "x:0")
