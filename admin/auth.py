"""Bearer tokens and roles of the admin API.

Why this shape: tokens come from one setting (``ONYX_WA_ADMIN_TOKENS``), so a deployment needs
no user table to start; each token carries a role, and a tenant admin's tenant, and an optional
name for the audit log. Tokens are compared in constant time (``hmac.compare_digest``) against
every configured token, so timing says nothing about which one, or how much of one, matched.
The token itself is never stored, logged or shown: the audit log names the actor by its name
or by a short fingerprint.

Format (comma-separated entries)::

    TOKEN=operator[@NAME]
    TOKEN=tenant:TENANT_ID[@NAME]
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Literal

from onyx_wa.settings import SettingsError
from store.repo import TENANT_RE

Role = Literal["operator", "tenant"]
MIN_TOKEN_CHARS = 16
NAME_MAX_CHARS = 64
TOKEN_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
ENV = "ONYX_WA_ADMIN_TOKENS"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, a tenant for tenant admins, and a name for the audit log."""

    role: Role
    name: str
    tenant_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    def can_see(self, tenant_id: str | None) -> bool:
        """Operators see every tenant; a tenant admin only their own."""
        return self.is_operator or (tenant_id is not None and tenant_id == self.tenant_id)

    @property
    def actor(self) -> str:
        """The audit log's "who": never the token."""
        return self.name

    def to_dict(self) -> dict[str, str | None]:
        return {"role": self.role, "name": self.name, "tenant_id": self.tenant_id}


@dataclass(frozen=True)
class _Entry:
    token: bytes = field(repr=False)
    principal: Principal


def fingerprint(token: str) -> str:
    """A short, stable, non-reversible label for a token (for audit rows without a name)."""
    return "token-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def parse_tokens(spec: str | None) -> list[_Entry]:
    """Parse ``ONYX_WA_ADMIN_TOKENS``; errors name the entry by position, never by its token."""
    entries: list[_Entry] = []
    seen: set[str] = set()
    for position, raw in enumerate((spec or "").split(","), start=1):
        item = raw.strip()
        if not item:
            continue
        where = f"{ENV} entry #{position}"
        token, sep, grant = item.partition("=")
        token = token.strip()
        if not sep or not token:
            raise SettingsError(f"{where} must look like TOKEN=operator or TOKEN=tenant:ID")
        if len(token) < MIN_TOKEN_CHARS:
            raise SettingsError(
                f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters; {TOKEN_HINT}"
            )
        if token in seen:
            raise SettingsError(f"{where}: the same token is configured twice")
        seen.add(token)
        grant, _, name = grant.strip().partition("@")
        name = name.strip() or fingerprint(token)
        if len(name) > NAME_MAX_CHARS:
            raise SettingsError(f"{where}: the name is longer than {NAME_MAX_CHARS} characters")
        role, _, tenant = grant.partition(":")
        role, tenant = role.strip(), tenant.strip()
        if role == "operator":
            if tenant:
                raise SettingsError(
                    f"{where}: an operator token sees every tenant; drop ':{tenant}'"
                )
            principal = Principal(role="operator", name=name)
        elif role == "tenant":
            if not TENANT_RE.match(tenant):
                raise SettingsError(
                    f"{where}: a tenant token needs a valid tenant id, as in TOKEN=tenant:acme"
                )
            principal = Principal(role="tenant", name=name, tenant_id=tenant)
        else:
            raise SettingsError(f"{where}: the role must be operator or tenant, not {role!r}")
        entries.append(_Entry(token=token.encode("utf-8"), principal=principal))
    return entries


class TokenAuth:
    """Resolves an ``Authorization`` header to a :class:`Principal` (or None)."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = list(entries)

    @classmethod
    def from_setting(cls, spec: str | None) -> TokenAuth:
        return cls(parse_tokens(spec))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never show tokens
        return f"TokenAuth(tokens={len(self._entries)})"

    def authenticate(self, header: str | None) -> tuple[Principal | None, str | None]:
        """``(principal, None)`` on success, else ``(None, reason)`` with an RFC 6750 error code.

        The reason is ``None`` when no credentials were sent (RFC 6750 then gives no error code)
        and ``"invalid_token"`` (or ``"invalid_request"`` for a malformed header) otherwise.
        """
        if not header:
            return None, None
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            return None, "invalid_request"
        try:
            presented = credentials.encode("utf-8")
        except UnicodeEncodeError:  # header bytes that are not UTF-8: no token looks like that
            return None, "invalid_token"
        found: Principal | None = None
        for entry in self._entries:  # no early exit: every comparison runs
            if hmac.compare_digest(entry.token, presented):
                found = entry.principal
        return (found, None) if found is not None else (None, "invalid_token")
