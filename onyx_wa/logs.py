"""Logging set-up: structlog over the standard library, JSON in production, readable locally.

Why structlog: key/value events (tenant, hashed chat, request id) that log processors can index,
while libraries that use ``logging`` (aiokafka, Faust, aiohttp) flow through the same renderer.
Chat ids are phone numbers: log :func:`hash_id` of them, never the raw value.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

from onyx_wa.settings import Settings

_NOISY = ("aiokafka", "faust", "mode", "aiohttp.access", "kafka", "alembic")


def hash_id(value: str | None) -> str:
    """A short stable pseudonym for a phone number / BSUID / chat id in logs and metrics."""
    if not value:
        return "-"
    return hashlib.blake2b(value.encode(), digest_size=6).hexdigest()


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
