"""The audit log: one ``wa_audit_log`` row per change, in the same transaction as the change.

Why a session hook: the repositories open and commit their own sessions. Giving them a session
factory whose sessions carry a pending audit entry (``session.info``) makes the entry part of
the very transaction that writes the change and bumps the config version, so there is never a
change without its row, or a row for a change that rolled back (a duplicate, a failed check).
Rows name the actor (a token's name, never the token), the tenant, the action, the object and
the names of the changed fields, never their values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from admin.auth import Principal
from store.models import AuditLogEntry, ConfigSession

Sessions = async_sessionmaker[AsyncSession]

_INFO_KEY = "onyx_wa_audit"
_ADDED_KEY = "onyx_wa_audit_entry"


@dataclass
class PendingAudit:
    """What to record; ``id_of`` names the ORM class whose new row's id becomes ``object_id``."""

    actor: str
    role: str
    tenant_id: str | None
    action: str
    object_type: str
    object_id: str | None = None
    fields: list[str] = field(default_factory=list)
    id_of: type | None = None
    recorded: bool = False  # set once a transaction carrying the entry committed

    def values(self) -> dict[str, Any]:
        changes: dict[str, Any] = {"fields": sorted(set(self.fields))}
        return {
            "actor": self.actor[:128],
            "role": self.role,
            "tenant_id": self.tenant_id,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "changes": changes,
        }


class AuditedSession(ConfigSession):
    """A config session that also writes the pending audit entry found in ``info``."""


@event.listens_for(AuditedSession, "before_flush")
def _add_entry(session: Session, _context: Any, _instances: Any) -> None:
    pending: PendingAudit | None = session.info.get(_INFO_KEY)
    if pending is None or _ADDED_KEY in session.info:
        return
    changed = [*session.new, *session.deleted, *session.dirty]
    if not any(not isinstance(obj, AuditLogEntry) for obj in changed):
        return  # nothing is being written (yet): no entry
    entry = AuditLogEntry(**pending.values())
    session.add(entry)
    session.info[_ADDED_KEY] = entry
    if pending.id_of is not None and pending.object_id is None:
        targets = [obj for obj in session.new if isinstance(obj, pending.id_of)]
        session.info["onyx_wa_audit_targets"] = targets


@event.listens_for(AuditedSession, "after_flush_postexec")
def _fill_object_id(session: Session, _context: Any) -> None:
    """A created object's id exists only after the flush; commit flushes the entry again."""
    entry: AuditLogEntry | None = session.info.get(_ADDED_KEY)
    targets = session.info.pop("onyx_wa_audit_targets", None)
    if entry is not None and targets:
        entry.object_id = str(targets[0].id)


@event.listens_for(AuditedSession, "after_commit")
def _mark_recorded(session: Session) -> None:
    pending: PendingAudit | None = session.info.get(_INFO_KEY)
    entry = session.info.get(_ADDED_KEY)
    if pending is not None and entry is not None:
        pending.recorded = True
        pending.object_id = entry.object_id


@event.listens_for(AuditedSession, "after_rollback")
def _forget_entry(session: Session) -> None:
    """A rolled-back entry must be added again if the caller retries in this session."""
    session.info.pop(_ADDED_KEY, None)


def audited_sessions(base: Sessions, pending: PendingAudit) -> Sessions:
    """A session factory like ``base`` whose sessions record ``pending`` with their change."""
    kw = dict(base.kw)
    bind = kw.pop("bind")
    kw["sync_session_class"] = AuditedSession
    info = dict(kw.pop("info", None) or {})
    info[_INFO_KEY] = pending
    return async_sessionmaker(bind, class_=base.class_, info=info, **kw)


def pending_for(
    principal: Principal,
    *,
    tenant_id: str | None,
    action: str,
    object_type: str,
    object_id: str | None = None,
    fields: list[str] | None = None,
    id_of: type | None = None,
) -> PendingAudit:
    return PendingAudit(
        actor=principal.actor,
        role=principal.role,
        tenant_id=tenant_id,
        action=action,
        object_type=object_type,
        object_id=object_id,
        fields=list(fields or []),
        id_of=id_of,
    )


def entry_dict(row: AuditLogEntry) -> dict[str, Any]:
    at: datetime = row.at
    return {
        "id": row.id,
        "at": at,
        "actor": row.actor,
        "role": row.role,
        "tenant_id": row.tenant_id,
        "action": row.action,
        "object_type": row.object_type,
        "object_id": row.object_id,
        "changes": dict(row.changes or {}),
    }


async def list_entries(
    sessions: Sessions,
    *,
    tenant_id: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; returns the page and the ``before`` cursor of the next page (or None)."""
    stmt = select(AuditLogEntry).order_by(AuditLogEntry.id.desc()).limit(limit + 1)
    if tenant_id is not None:
        stmt = stmt.where(AuditLogEntry.tenant_id == tenant_id)
    if action is not None:
        stmt = stmt.where(AuditLogEntry.action == action)
    if object_type is not None:
        stmt = stmt.where(AuditLogEntry.object_type == object_type)
    if before is not None:
        stmt = stmt.where(AuditLogEntry.id < before)
    async with sessions() as session:
        rows = list((await session.scalars(stmt)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return [entry_dict(r) for r in rows], (rows[-1].id if more and rows else None)
