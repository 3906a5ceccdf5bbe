"""Pseudonyms for users and chats, and deleting what we keep about a user ("forget me").

Why a keyed hash (HMAC-SHA256) and not a plain one: phone numbers are a small, guessable space,
so ``sha256(phone)`` is reversed by enumerating numbers. Keyed with a per-install secret, the
hash is still stable (analytics can count distinct users, a forget request finds the user's
rows, a log line can be correlated with a fact row) but useless without the secret.

The secret is ``ONYX_WA_HASH_SECRET`` when set; otherwise it is derived from the encryption key
(the *last*, i.e. oldest, of the configured Fernet keys, so adding a new key in front for
rotation does not change any hash). Retiring that oldest key changes every hash: set
``ONYX_WA_HASH_SECRET`` explicitly if you plan to. Forgetting a user deletes rows under the hash
of every configured key, so rows written before a rotation are found too.

One helper for everybody: analytics facts (``user_hash``), logs (``chat_hash``) and the forget
path all call :func:`user_hash`, so the same user has the same hash everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onyx_wa.settings import Settings

log = logging.getLogger(__name__)

_DERIVE_LABEL = b"onyx-wa user hash v1"

_default: tuple[bytes, ...] | None = None  # set by configure(); secrets, the first one writes


def _derive(material: str) -> bytes:
    return hmac.new(_DERIVE_LABEL, material.encode("utf-8"), hashlib.sha256).digest()


@functools.lru_cache(maxsize=16)
def _secrets_from(hash_secret: str | None, encryption_keys: str) -> tuple[bytes, ...]:
    keys = [k.strip() for k in encryption_keys.split(",") if k.strip()]
    if hash_secret:
        return (_derive("secret:" + hash_secret),)
    # oldest key first: the one that writes; then the others (forget also searches those)
    ordered = list(reversed(keys))
    return tuple(_derive("key:" + key) for key in ordered)


def secrets_for(settings: Settings) -> tuple[bytes, ...]:
    """The hashing secrets for ``settings``: the first writes, all are searched when forgetting.

    Raises ``SettingsError`` when no secret can be had (external database and no key).
    """
    hash_secret = getattr(settings, "hash_secret", None)
    if hash_secret:
        return _secrets_from(hash_secret, "")
    from store.crypto import resolve_encryption_key

    return _secrets_from(None, resolve_encryption_key(settings))


def configure(settings: Settings) -> None:
    """Make ``settings``' secret the process default (workers, admin and the CLI call this)."""
    global _default
    _default = secrets_for(settings)


def configure_if_available(settings: Settings) -> bool:
    """:func:`configure` when a secret exists without creating one (no key file is written)."""
    from pathlib import Path

    from store.crypto import KEY_FILE_NAME

    if getattr(settings, "hash_secret", None) or settings.encryption_key:
        try:
            configure(settings)
            return True
        except Exception:  # noqa: BLE001 - an invalid key is reported by whoever needs it
            return False
    path = Path(settings.data_dir) / KEY_FILE_NAME
    if settings.embedded and settings.database_url is None and path.exists():
        try:
            configure(settings)
            return True
        except Exception:  # noqa: BLE001
            return False
    return False


def _current(settings: Settings | None) -> tuple[bytes, ...]:
    if settings is not None:
        return secrets_for(settings)
    if _default is not None:
        return _default
    from onyx_wa.settings import get_settings

    configure(get_settings())
    assert _default is not None
    return _default


def _digest(secret: bytes, tenant_id: str, user_id: str) -> str:
    message = f"{tenant_id}\x1f{user_id}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def user_hash(tenant_id: str, user_id: str, settings: Settings | None = None) -> str:
    """The pseudonym of ``user_id`` within ``tenant_id``: 64 hex chars (``wa_*_fact.user_hash``).

    The tenant is part of the input: the same phone number in two tenants gets two unrelated
    hashes, so one tenant's analytics cannot be joined with another's.
    """
    return _digest(_current(settings)[0], tenant_id, user_id)


def user_hashes(tenant_id: str, user_id: str, settings: Settings | None = None) -> list[str]:
    """The user's hash under every configured key (what a forget request deletes)."""
    return [_digest(secret, tenant_id, user_id) for secret in _current(settings)]


# --- logs: never fail, never leak -----------------------------------------------------------------

_log_secret: bytes | None = None


def _secret_for_logs() -> bytes:
    """The configured secret; before :func:`configure` (or without a key) a random one.

    Never resolves settings itself: a log call must not create key files or raise.
    """
    global _log_secret
    if _default is not None:
        return _default[0]
    if _log_secret is None:
        _log_secret = os.urandom(32)
    return _log_secret


def chat_hash(tenant_id: str | None, chat_id: str | None) -> str:
    """``user_hash`` of a chat id for log lines (a 1:1 chat id is the user id); ``-`` if none."""
    if not chat_id:
        return "-"
    return _digest(_secret_for_logs(), tenant_id or "", chat_id)


def short_hash(value: str | None) -> str:
    """A 12-hex keyed pseudonym of a value without tenant (admin object ids, log fields)."""
    if not value:
        return "-"
    return _digest(_secret_for_logs(), "", value)[:12]


# --- forgetting a user's rows ---------------------------------------------------------------------


def forget_lock_key(tenant_id: str) -> int:
    """The PostgreSQL advisory-lock key of ``tenant_id``'s forgets (a signed 64-bit int)."""
    digest = hashlib.sha256(b"onyx-wa forget\x1f" + tenant_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def lock_tenant_forgets(session: Any, tenant_ids: Any, *, shared: bool) -> None:
    """Serialize forgets with analytics writes of the same tenants, until the transaction ends.

    Call it first in the transaction. On PostgreSQL a forget takes an advisory lock on its
    tenant exclusively and an analytics batch shares those of its tenants: a batch that read "not
    forgotten" commits before the forget deletes, and a batch that starts after the forget sees
    its ``wa_forgotten_user`` rows. Without it, a batch in flight during a forget could insert
    facts the forget's DELETE did not see. On SQLite both take the database's write lock now
    (a no-op UPDATE), since the driver would otherwise read outside the transaction.
    """
    from sqlalchemy import text

    dialect = session.bind.dialect.name
    if dialect == "sqlite":
        await session.execute(
            text("UPDATE wa_forgotten_user SET forgotten_at = forgotten_at WHERE 1 = 0")
        )
        return
    if dialect != "postgresql":
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    for tenant_id in sorted(set(tenant_ids)):
        await session.execute(text(f"SELECT {function}(:key)"), {"key": forget_lock_key(tenant_id)})


def _mark_forgotten(dialect: str) -> Any:
    """Upsert ``wa_forgotten_user`` rows; a repeated forget keeps the latest time."""
    from sqlalchemy import case

    from store.models import ForgottenUser

    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    table = ForgottenUser.__table__
    stmt = insert(table)
    new, old = stmt.excluded, table.c
    return stmt.on_conflict_do_update(
        index_elements=[old.tenant_id, old.user_hash],
        set_={
            "forgotten_at": case(
                (new.forgotten_at > old.forgotten_at, new.forgotten_at), else_=old.forgotten_at
            )
        },
    )


async def forgotten_since(session: Any, tenant_id: str, hashes: Any) -> dict[str, int]:
    """``{user_hash: forgotten_at}`` for those of ``hashes`` forgotten in ``tenant_id``."""
    from sqlalchemy import select

    from store.models import ForgottenUser

    wanted = sorted(set(hashes))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), 500):  # bounded IN lists
        rows = await session.execute(
            select(ForgottenUser.user_hash, ForgottenUser.forgotten_at).where(
                ForgottenUser.tenant_id == tenant_id,
                ForgottenUser.user_hash.in_(wanted[start : start + 500]),
            )
        )
        found.update({user: int(at) for user, at in rows})
    return found


@dataclass
class ForgetReport:
    """What was deleted from the database for one user of one tenant."""

    user_links: int = 0
    question_facts: int = 0
    feedback_facts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "user_links": self.user_links,
            "question_facts": self.question_facts,
            "feedback_facts": self.feedback_facts,
        }


async def forget_user_rows(
    sessions: Any,
    tenant_id: str,
    user_id: str,
    *,
    settings: Settings | None = None,
    audit: dict[str, Any] | None = None,
    at_ms: int | None = None,
) -> ForgetReport:
    """Delete the user's links (on every bot of the tenant) and analytics facts, in one
    transaction; ``audit`` (``AuditLogEntry`` values) is written in the same transaction.

    Links go through the ORM so the config version is bumped and every worker drops its cached
    link index; facts go by ``user_hash`` under every configured key. The same transaction
    records the user in ``wa_forgotten_user`` (time ``at_ms``, default now), so the analytics
    agent never re-creates facts of events up to then from a replay. Idempotent.
    """
    import time

    from sqlalchemy import delete, select

    from store.models import AuditLogEntry, FeedbackFact, QuestionFact, WhatsAppUserLink

    hashes = user_hashes(tenant_id, user_id, settings)
    forgotten_at = int(time.time() * 1000) if at_ms is None else at_ms
    report = ForgetReport()
    async with sessions() as session:
        await lock_tenant_forgets(session, [tenant_id], shared=False)
        links = (
            await session.scalars(
                select(WhatsAppUserLink).where(
                    WhatsAppUserLink.tenant_id == tenant_id, WhatsAppUserLink.user_id == user_id
                )
            )
        ).all()
        for row in links:
            await session.delete(row)
        report.user_links = len(links)
        result = await session.execute(
            delete(QuestionFact).where(
                QuestionFact.tenant_id == tenant_id, QuestionFact.user_hash.in_(hashes)
            )
        )
        report.question_facts = int(result.rowcount or 0)
        result = await session.execute(
            delete(FeedbackFact).where(
                FeedbackFact.tenant_id == tenant_id, FeedbackFact.user_hash.in_(hashes)
            )
        )
        report.feedback_facts = int(result.rowcount or 0)
        await session.execute(
            _mark_forgotten(session.bind.dialect.name),
            [
                {"tenant_id": tenant_id, "user_hash": uh, "forgotten_at": forgotten_at}
                for uh in hashes
            ],
        )
        if audit is not None:
            session.add(AuditLogEntry(**audit))
        await session.commit()
    log.info(
        "forgot user rows",
        extra={"tenant": tenant_id, "chat_hash": hashes[0], **report.as_dict()},
    )
    return report
