"""One error shape for every failure of the admin API, and the middleware that produces it.

Every error is ``{"error": {"code": ..., "message": ..., "details": [...]?}}`` with a matching
HTTP status, so clients (and the admin UI) handle failures in one place. Messages never contain
request values: validation details name the field and the rule, not what was sent (it may be a
secret).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

log = logging.getLogger("admin")

REALM = "onyx-wa admin"


class ApiError(Exception):
    """An expected failure with its HTTP status, error code and human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return web.json_response({"error": body}, status=self.status, headers=self.headers)


def bad_request(message: str, details: list[dict[str, Any]] | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, details=details)


def not_found(what: str = "not found") -> ApiError:
    return ApiError(404, "not_found", what)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def unauthorized(reason: str | None) -> ApiError:
    """401 with the RFC 6750 challenge; ``reason`` is None when no token was sent at all."""
    challenge = f'Bearer realm="{REALM}"'
    if reason:
        challenge += f', error="{reason}"'
    message = (
        "missing bearer token: send 'Authorization: Bearer <token>'"
        if reason is None
        else "invalid bearer token"
        if reason == "invalid_token"
        else "malformed Authorization header: use 'Authorization: Bearer <token>'"
    )
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


_HTTP_CODES = {
    404: ("not_found", "no such endpoint"),
    405: ("method_not_allowed", "method not allowed on this endpoint"),
    413: ("payload_too_large", "request body too large"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn ApiErrors, aiohttp's HTTP errors and crashes into the one JSON error shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return ApiError(exc.status, code, message, headers=headers).response()
    except Exception as exc:  # noqa: BLE001 - the client gets one line; the log gets the cause
        from store.crypto import SecretDecryptionError
        from store.db import DatabaseUnavailable

        if isinstance(exc, SecretDecryptionError):
            log.error("admin request failed: %s", exc)
            return ApiError(500, "secret_key_mismatch", str(exc)).response()
        if isinstance(exc, DatabaseUnavailable) or _is_db_connection_error(exc):
            log.error("admin request failed: database unavailable (%s)", type(exc).__name__)
            return ApiError(503, "database_unavailable", "the database is unavailable").response()
        # The exception type only: messages of driver errors can carry the values sent.
        log.error("admin request failed: %s", type(exc).__name__, exc_info=_safe_exc_info(exc))
        return ApiError(500, "internal_error", "internal error (see the admin log)").response()


def _is_db_connection_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, InterfaceError | OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _safe_exc_info(exc: BaseException) -> bool:
    """Tracebacks of SQL errors include bound parameters (encrypted, but still): skip them."""
    from sqlalchemy.exc import StatementError

    return not isinstance(exc, StatementError)
