"""Structured logs: one JSON object per line with tenant, chat_hash, request id and stage; phone
numbers and tokens masked; library (stdlib) records rendered the same way; the real command's
stderr is JSON lines."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog

from onyx_wa.broker import free_port
from onyx_wa.logs import bind, configure_logging, get_logger, hash_id, redact_text
from onyx_wa.settings import load_settings
from store.privacy import user_hash

PHONE = "4915123456789"
TOKEN = "EAAGm0PX4ZCpsBAKZCxyzxyzxyzxyzxyz1234567890"


@pytest.fixture
def logs(tmp_path) -> Iterator[tuple[io.StringIO, object]]:
    """configure_logging into a buffer; the process's logging is restored afterwards."""
    from cryptography.fernet import Fernet

    import store.privacy as privacy

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    saved_secret = privacy._default
    settings = load_settings(
        log_format="json", data_dir=tmp_path, encryption_key=Fernet.generate_key().decode()
    )
    buf = io.StringIO()
    configure_logging(settings, stream=buf)
    try:
        yield buf, settings
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()
        privacy._default = saved_secret


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_a_log_line_is_json_with_the_context_fields(logs) -> None:
    buf, settings = logs
    with bind(tenant="acme", chat=PHONE, request_id="req-1", stage="conversation"):
        get_logger("streams.conversation").info("answered", latency_ms=12)
    [line] = lines(buf)
    assert line["event"] == "answered" and line["level"] == "info"
    assert line["logger"] == "streams.conversation" and "timestamp" in line
    assert (line["tenant"], line["request_id"], line["stage"]) == ("acme", "req-1", "conversation")
    # the same keyed hash analytics stores as user_hash; the raw number never appears
    assert line["chat_hash"] == user_hash("acme", PHONE, settings)
    assert line["latency_ms"] == 12
    assert PHONE not in buf.getvalue()


def test_stdlib_extra_fields_and_chat_ids_are_hashed(logs) -> None:
    buf, settings = logs
    logging.getLogger("streams.conversation").info(
        "conversation forgotten", extra={"tenant": "acme", "chat": PHONE, "stage": "conversation"}
    )
    [line] = lines(buf)
    assert line["chat_hash"] == user_hash("acme", PHONE, settings) and "chat" not in line
    assert PHONE not in buf.getvalue()


def test_phone_numbers_and_tokens_are_masked_in_messages_and_fields(logs) -> None:
    buf, _ = logs
    log = get_logger("x")
    log.info(f"sending to {PHONE} with Bearer {TOKEN}", recipient=PHONE, access_token=TOKEN,
             note=f"user +49 151 2345 6789 key on_abcdef123456 {TOKEN}", nested={"to": PHONE},
             when=1733040000000)  # fmt: skip
    logging.getLogger("aiohttp.client").warning("GET /?access_token=%s for %s", TOKEN, PHONE)
    text = buf.getvalue()
    assert PHONE not in text and TOKEN not in text and "on_abcdef123456" not in text
    assert "151 2345" not in text
    first, second = lines(buf)
    assert first["recipient"] == "[phone]" and first["access_token"] == "[redacted]"
    assert first["nested"] == {"to": "[phone]"}
    assert first["when"] == 1733040000000  # numbers that are not phone numbers stay
    assert "[phone]" in first["event"] and "Bearer [redacted]" in first["event"]
    assert second["event"] == "GET /?access_token=[redacted] for [phone]"
    assert redact_text("US.13491208655302 wrote") == "[phone] wrote"  # a BSUID
    assert redact_text("at 1733040000000 on v25.0") == "at 1733040000000 on v25.0"


def test_library_logs_and_exceptions_come_out_as_json(logs) -> None:
    buf, _ = logs
    logging.getLogger("aiokafka.consumer").warning("Heartbeat failed for group %s", "g1")
    try:
        raise ValueError(f"bad number {PHONE}")
    except ValueError:
        logging.getLogger("faust").exception("agent crashed")
    warning, error = lines(buf)
    assert warning["logger"] == "aiokafka.consumer" and warning["level"] == "warning"
    assert warning["event"] == "Heartbeat failed for group g1"
    assert error["level"] == "error" and "ValueError" in error["exception"]
    assert PHONE not in buf.getvalue()


def test_hash_id_is_keyed_and_short(logs) -> None:
    value = hash_id(PHONE)
    assert len(value) == 12 and PHONE not in value and hash_id(PHONE) == value
    assert hash_id(None) == "-"


def test_console_format_is_readable(tmp_path) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buf = io.StringIO()
    try:
        configure_logging(load_settings(log_format="console", data_dir=tmp_path), stream=buf)
        get_logger("x").info("hello", tenant="acme")
        text = buf.getvalue()
        assert "hello" in text and "tenant" in text and not text.lstrip().startswith("{")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


def test_the_command_writes_json_lines_to_stderr(tmp_path) -> None:
    """A real ``onyx-wa broker`` process with ONYX_WA_LOG_FORMAT=json: every stderr line parses."""
    env = {
        **os.environ,
        "ONYX_WA_DATA_DIR": str(tmp_path / "data"),
        "ONYX_WA_LOG_FORMAT": "json",
        "ONYX_WA_LOG_LEVEL": "INFO",
        "ONYX_WA_BROKER_PORT": str(free_port()),
        "ONYX_WA_PARTITIONS": "1",
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "DATABASE_URL": "",
        "ONYX_WA_ENCRYPTION_KEY": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "onyx_wa.cli", "broker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "broker ready" in line, line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records, err
    for record in records:
        assert {"event", "level", "logger", "timestamp"} <= set(record), record
    assert any(r["logger"] == "onyx_wa.broker" and "starting" in r["event"] for r in records)
