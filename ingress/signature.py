"""X-Hub-Signature-256 verification over the raw body, in constant time.

Why over the raw bytes: Meta signs the body exactly as sent (non-ASCII escaped as \\uXXXX);
re-serialising the parsed JSON would change the bytes and break every signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

PREFIX = "sha256="
HEX_DIGITS = frozenset("0123456789abcdef")


class SignatureMissing(Exception):
    """No usable X-Hub-Signature-256 header (→ 401)."""


class SignatureMismatch(Exception):
    """The header does not match the body under the owning bot's app secret (→ 403)."""


def expected_signature(app_secret: str, body: bytes) -> str:
    return hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify(header: str | None, body: bytes, app_secrets: Iterable[str]) -> None:
    """Every app secret must verify the body (each tenant in a batch signs the same bytes).

    Several numbers can share one Meta app (and so one secret); distinct secrets in one POST
    cannot all match, so such a delivery is rejected — as it should be.
    """
    if not header or not header.startswith(PREFIX) or len(header) != len(PREFIX) + 64:
        raise SignatureMissing
    given = header[len(PREFIX) :].lower()
    if not HEX_DIGITS.issuperset(given):  # also keeps non-ASCII away from compare_digest
        raise SignatureMissing
    secrets = set(app_secrets)
    if not secrets:
        raise SignatureMismatch
    for secret in secrets:
        if not hmac.compare_digest(given, expected_signature(secret, body)):
            raise SignatureMismatch
