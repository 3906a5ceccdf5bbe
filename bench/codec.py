"""Codec benchmark: Avro encode/decode of an InboundMessage vs json.dumps/loads of the same dict,
and the ClassifiedMessage that embeds it encoded spliced (its body reused) vs whole.

Why a same-run baseline: absolute microseconds depend on the machine and on whatever else runs
on it; the ratio to the stdlib JSON round trip of the same dict, measured in the same process
between the same rounds, is what stays comparable across runs and hosts.

Each round times ``n`` encodes, then ``n`` decodes of the bytes just encoded, then ``n`` JSON
round trips; figures are medians over the rounds, per record. ``onyx-wa bench codec`` runs it.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from schemas.codec import get_codec

RECORD = "InboundMessage"
MESSAGE: dict[str, Any] = {
    "message_id": "wamid.HBgLMTU1NTAwMDAwMDEVAgASGBQzQUI1RTk2QjY4MEM2RjQ2QjEyQgA=",
    "delivery_id": "5d2c0a4e-3f1b-4bb8-9d3e-2b8c0a3f9e11",
    "tenant_id": "acme",
    "phone_number_id": "106540352242922",
    "waba_id": "102290129340398",
    "chat_id": "15551234567",
    "chat_type": "direct",
    "group_id": None,
    "sender_id": "15551234567",
    "sender_phone": "15551234567",
    "sender_bsuid": None,
    "sender_name": "Ana Souza",
    "sender_username": None,
    "message_type": "text",
    "text": "How many vacation days do I get in my first year, and can I carry them over?",
    "interactive_id": None,
    "reaction_emoji": None,
    "target_message_id": None,
    "context_message_id": None,
    "forwarded": False,
    "mentions": [],
    "media": None,
    "errors": [],
    "payload_json": '{"from":"15551234567","id":"wamid.x","type":"text"}',
    "sent_at": datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
    "received_at": datetime(2026, 11, 25, 10, 0, 1, tzinfo=UTC),
}


CLASSIFIED_HEAD: dict[str, Any] = {
    "kind": "question",
    "question": MESSAGE["text"],
    "command": None,
    "command_arg": None,
    "feedback_positive": None,
    "feedback_target": None,
    "reason": None,
}


def _per_record_us(fn: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def run(n: int = 50_000, rounds: int = 5) -> dict[str, Any]:
    """Measure and print the codec's per-record medians against the JSON baseline."""
    codec = get_codec()
    data = codec.encode(RECORD, MESSAGE)
    text = json.dumps(MESSAGE, default=str)
    if codec.decode(data) != MESSAGE:  # never benchmark a codec that is wrong
        raise RuntimeError("codec round trip changed the record")

    # the classified message embeds the inbound one: the conversation stage sends it spliced
    # (the inbound body reused), measured against encoding the whole record
    classified = {**CLASSIFIED_HEAD, "message": codec.decode(data)}
    if codec.encode_spliced("ClassifiedMessage", classified, data) != codec.encode(
        "ClassifiedMessage", classified
    ):
        raise RuntimeError("the spliced encoding differs from the plain one")

    kinds = ("encode", "unchecked", "decode", "json", "spliced", "classified")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # collections would land in whichever loop happens to be running
    try:
        _per_record_us(lambda: codec.decode(codec.encode(RECORD, MESSAGE)), min(n, 2_000))
        for _ in range(rounds):
            samples["encode"].append(_per_record_us(lambda: codec.encode(RECORD, MESSAGE), n))
            samples["unchecked"].append(
                _per_record_us(lambda: codec.encode(RECORD, MESSAGE, validate=False), n)
            )
            samples["decode"].append(_per_record_us(lambda: codec.decode(data), n))
            samples["json"].append(
                _per_record_us(lambda: json.loads(json.dumps(MESSAGE, default=str)), n)
            )
            samples["classified"].append(
                _per_record_us(lambda: codec.encode("ClassifiedMessage", classified), n)
            )
            samples["spliced"].append(
                _per_record_us(
                    lambda: codec.encode_spliced("ClassifiedMessage", classified, data), n
                )
            )
    finally:
        if gc_was_enabled:
            gc.enable()

    encode_us = statistics.median(samples["encode"])
    unchecked_us = statistics.median(samples["unchecked"])
    decode_us = statistics.median(samples["decode"])
    round_trip_us = statistics.median(
        e + d for e, d in zip(samples["encode"], samples["decode"], strict=True)
    )
    json_us = statistics.median(samples["json"])
    classified_us = statistics.median(samples["classified"])
    spliced_us = statistics.median(samples["spliced"])
    result = {
        "record": RECORD,
        "records_per_round": n,
        "rounds": rounds,
        "encode_us_median": round(encode_us, 2),
        "encode_unvalidated_us_median": round(unchecked_us, 2),
        "decode_us_median": round(decode_us, 2),
        "encode_decode_us_median": round(round_trip_us, 2),
        "json_baseline_us_median": round(json_us, 2),
        "ratio_vs_json": round(round_trip_us / json_us, 2),
        "records_per_s_encode_decode": round(1e6 / round_trip_us),
        "bytes_avro": len(data),
        "bytes_json": len(text.encode()),
        "classified_encode_us_median": round(classified_us, 2),
        "classified_spliced_us_median": round(spliced_us, 2),
        "spliced_ratio": round(spliced_us / classified_us, 2),
    }
    print(
        f"codec {RECORD}: encode {encode_us:.1f} µs (unvalidated {unchecked_us:.1f}), "
        f"decode {decode_us:.1f} µs, encode+decode {round_trip_us:.1f} µs/record "
        f"(~{result['records_per_s_encode_decode']:,}/s)\n"
        f"baseline json.dumps+loads {json_us:.1f} µs → ratio {round_trip_us / json_us:.2f}; "
        f"size {len(data)} B Avro vs {len(text.encode())} B JSON\n"
        f"ClassifiedMessage (embeds it): spliced {spliced_us:.1f} µs vs encoded whole "
        f"{classified_us:.1f} µs → ratio {spliced_us / classified_us:.2f}",
        flush=True,
    )
    return result


if __name__ == "__main__":  # pragma: no cover
    run()
