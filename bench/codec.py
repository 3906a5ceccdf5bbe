"""Codec benchmark: Avro encode+decode of an InboundMessage vs json.dumps/loads of the same dict.

Prints medians over several rounds and the ratio (codec time / JSON time) measured in the same run.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from schemas.codec import get_codec

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


def _round(fn: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6  # µs per record


def run(n: int = 20_000, rounds: int = 5) -> dict[str, Any]:
    codec = get_codec()

    def avro() -> None:
        codec.decode(codec.encode("InboundMessage", MESSAGE))

    def avro_unvalidated() -> None:
        codec.validate = False
        try:
            codec.decode(codec.encode("InboundMessage", MESSAGE))
        finally:
            codec.validate = True

    def baseline() -> None:
        json.loads(json.dumps(MESSAGE, default=str))

    avro_us = statistics.median(_round(avro, n) for _ in range(rounds))
    raw_us = statistics.median(_round(avro_unvalidated, n) for _ in range(rounds))
    json_us = statistics.median(_round(baseline, n) for _ in range(rounds))
    size_avro = len(codec.encode("InboundMessage", MESSAGE))
    size_json = len(json.dumps(MESSAGE, default=str).encode())
    result = {
        "records_per_round": n,
        "avro_encode_decode_us_median": round(avro_us, 2),
        "avro_without_validation_us_median": round(raw_us, 2),
        "json_baseline_us_median": round(json_us, 2),
        "ratio_vs_json": round(avro_us / json_us, 2),
        "bytes_avro": size_avro,
        "bytes_json": size_json,
    }
    print(
        f"codec: Avro encode+decode {avro_us:.1f} µs/record (unvalidated {raw_us:.1f}), "
        f"JSON baseline {json_us:.1f} µs → ratio {avro_us / json_us:.2f}; "
        f"{size_avro} vs {size_json} bytes",
        flush=True,
    )
    return result


if __name__ == "__main__":  # pragma: no cover
    run()
