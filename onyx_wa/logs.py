"""Logging set-up: structlog over the standard library, JSON lines in production, readable locally.

Why structlog: key/value events (tenant, hashed chat, request id, stage) that log processors can
index, while libraries that use ``logging`` (aiokafka, Faust, aiohttp) flow through the same
processors and renderer (``structlog.stdlib.ProcessorFormatter``), so every line on stderr is one
JSON object.

- ``ONYX_WA_LOG_FORMAT=json|console``; unset: console on a terminal, JSON otherwise.
- Context: :func:`bind` (contextvars) or ``extra={...}`` on a stdlib call adds fields. A ``chat``
  or ``chat_id`` field is replaced by ``chat_hash`` (``store.privacy.chat_hash``, the same keyed
  hash analytics uses for ``user_hash``): raw chat ids are phone numbers and never reach a log.
- Redaction, a safety net: values under secret-looking keys, bearer/Meta/Onyx tokens and
  phone-number-like digit runs anywhere in a message or field are masked before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

from onyx_wa.settings import Settings

_NOISY = ("aiokafka", "faust", "mode", "aiohttp.access", "kafka", "alembic")

MASK = "[redacted]"
PHONE_MASK = "[phone]"

# keys whose values are secrets whatever they look like
_SECRET_KEY = re.compile(
    r"(?i)(pass(word)?|secret|token|api[_-]?key|authorization|auth|cookie|signature|credential"
    r"|private[_-]?key|encryption[_-]?key)"
)
# keys whose values are raw user identifiers
_PHONE_KEYS = frozenset(
    {"phone", "wa_id", "from", "to", "recipient", "sender", "sender_id", "user", "user_id"}
)
_TOKEN = re.compile(
    r"(?i)(?P<keep>\bbearer\s+|\b(?:access_token|api_key|apikey|token|secret|password)=)"
    r"[^&\s\"',;]{4,}"  # Authorization: Bearer ..., ?access_token=...
    r"|\bEAA[A-Za-z0-9]{20,}"  # Meta Graph API access tokens
    r"|\bon_[A-Za-z0-9_-]{8,}"  # Onyx API keys
    r"|\bsha256=[0-9a-f]{16,}"  # webhook signatures
    r"|\b[A-Za-z0-9_-]{20,}={0,2}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{10,}"  # JWT-like
)
# phone numbers: E.164 (8-15 digits, optional '+', optional spaces/dashes after a '+') and
# Meta's business-scoped user ids (US.1349...)
_PHONE = re.compile(
    r"(?<![\w.+])\+\d[\d \-]{6,18}\d(?![\w])"
    r"|(?<![\w.])\d{8,15}(?![\w])"
    r"|\b[A-Z]{2}\.\d{6,}\b"
)
# fields that are ours and never personal data: leave them alone
_SAFE_KEYS = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "tenant",
        "chat_hash",
        "request_id",
        "stage",
        "lineno",
        "pid",
        "process",
        "thread",
        "partition",
        "offset",
        "count",
        "status",
        "code",
        "latency_ms",
        "duration_ms",
        "phone_number_id",  # the business number's Meta id, not a person
    }
)


def hash_id(value: str | None) -> str:
    """A short stable pseudonym for a phone number / BSUID / chat id in logs and audit rows.

    Keyed with the install's secret (``store.privacy``): without it the pseudonym cannot be
    reversed by enumerating phone numbers.
    """
    from store.privacy import short_hash

    return short_hash(value)


def chat_hash(tenant_id: str | None, chat_id: str | None) -> str:
    """The ``chat_hash`` log field: ``store.privacy.user_hash`` of the chat id."""
    from store.privacy import chat_hash as _chat_hash

    return _chat_hash(tenant_id, chat_id)


def _mask_phones(text: str) -> str:
    def repl(match: re.Match[str]) -> str:
        found = match.group(0)
        digits = sum(ch.isdigit() for ch in found)
        if found[:1].isalpha():
            return PHONE_MASK  # a BSUID
        if not 8 <= digits <= 15:
            return found
        if digits == 13 and found.startswith("1"):
            return found  # epoch milliseconds, not a phone (no E.164 number looks like that)
        return PHONE_MASK

    return _PHONE.sub(repl, text)


def redact_text(text: str) -> str:
    """Mask tokens and phone numbers in free text (a log message, an exception)."""
    text = _TOKEN.sub(lambda m: (m.group("keep") or "") + MASK, text)
    return _mask_phones(text)


def _redact_value(key: str, value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if _SECRET_KEY.search(key):
        return MASK
    if key in _PHONE_KEYS:
        return PHONE_MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def hash_chat_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``chat=`` / ``chat_id=`` become ``chat_hash`` (with the event's ``tenant``)."""
    for name in ("chat", "chat_id"):
        if name in event:
            raw = event.pop(name)
            if raw and "chat_hash" not in event:
                event["chat_hash"] = chat_hash(event.get("tenant"), str(raw))
    return event


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask secrets and phone numbers anywhere in the event dict (last line of defence)."""
    for key in list(event):
        if key in _SAFE_KEYS:
            continue
        value = event[key]
        if key == "event" and isinstance(value, str):
            event[key] = redact_text(value)
        elif key in ("exception", "stack") and isinstance(value, str):
            event[key] = redact_text(value)
        else:
            event[key] = _redact_value(key, value)
    return event


def _drop_color_message(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event.pop("color_message", None)
    return event


def resolve_format(settings: Settings) -> str:
    """``json`` or ``console``: the setting, else (legacy ``log_json``) json, else by tty."""
    fmt = getattr(settings, "log_format", None)
    if fmt:
        return fmt
    if getattr(settings, "log_json", False):
        return "json"
    return "console" if sys.stderr.isatty() else "json"


def shared_processors() -> list[Any]:
    """Processors run for structlog *and* stdlib records, before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        hash_chat_ids,
        _drop_color_message,
    ]


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Route structlog and stdlib logging to one handler on stderr (or ``stream``)."""
    from store.privacy import configure_if_available

    # the chat_hash secret: the same as analytics' user_hash (no key yet: a random one)
    configure_if_available(settings)
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    fmt = resolve_format(settings)
    out = stream if stream is not None else sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=getattr(out, "isatty", lambda: False)())
    )
    shared = shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # Faust/mode install their own handlers on the root logger at start; keep ours in charge
    logging.captureWarnings(True)


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A structlog logger with ``context`` bound (``chat=`` is hashed when rendered)."""
    return structlog.get_logger(name).bind(**context) if context else structlog.get_logger(name)


@contextmanager
def bind(**context: Any) -> Iterator[None]:
    """Bind fields (tenant, chat, request_id, stage) to every log line in this task for a while.

    ``chat=`` is stored already hashed, so the raw id never sits in the context either.
    """
    fields = dict(context)
    raw = fields.pop("chat", None) or fields.pop("chat_id", None)
    if raw:
        fields["chat_hash"] = chat_hash(fields.get("tenant"), str(raw))
    tokens = structlog.contextvars.bind_contextvars(**fields)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
