"""Repositories over the configuration tables, used by ingress, streams, admin and the CLI.

Why repositories return frozen dataclasses instead of ORM rows: callers in other processes and
event loops must not lazy-load or mutate rows by accident, and secrets must only travel in the
one type (:class:`BotConfig`) whose ``repr`` masks them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.crypto import SecretBox, attach_secret_box
from store.models import (
    ANSWER_BACKENDS,
    GLOBAL_SCOPE,
    ConfigVersion,
    WhatsAppBot,
    WhatsAppChatConfig,
    WhatsAppUserLink,
)

TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PHONE_NUMBER_ID_RE = re.compile(r"^[0-9]{1,32}$")
SECRET_FIELDS = ("access_token", "app_secret", "verify_token", "onyx_api_key")
MASK = "********"
# Plaintext limits so the Fernet token (~4/3 of it plus ~100 chars) fits the column.
SECRET_MAX_CHARS = {
    "access_token": 1400,
    "app_secret": 600,
    "verify_token": 600,
    "onyx_api_key": 600,
}
_UNSET: Any = object()

Sessions = async_sessionmaker[AsyncSession]


class DuplicateError(ValueError):
    """The row already exists (e.g. a second bot for the same phone_number_id)."""


class NotFoundError(LookupError):
    """The bot / config / link to change does not exist."""


# --- views -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BotSummary:
    """A bot as shown to operators: secrets replaced by a mask (or None when unset)."""

    id: int
    tenant_id: str
    name: str
    enabled: bool
    phone_number_id: str
    waba_id: str | None
    display_phone_number: str | None
    answer_backend: str
    onyx_base_url: str | None
    default_persona_id: int | None
    throughput_per_s: float
    user_questions_per_minute: int | None
    tenant_questions_per_minute: int | None
    tenant_questions_per_day: int | None
    access_token: str | None
    app_secret: str | None
    verify_token: str | None
    onyx_api_key: str | None
    created_at: datetime | None
    updated_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BotConfig:
    """A bot with decrypted secrets, for internal use only (its ``repr`` masks them)."""

    id: int
    tenant_id: str
    name: str
    enabled: bool
    phone_number_id: str
    waba_id: str | None
    display_phone_number: str | None
    answer_backend: str
    onyx_base_url: str | None
    default_persona_id: int | None
    throughput_per_s: float
    user_questions_per_minute: int | None
    tenant_questions_per_minute: int | None
    tenant_questions_per_day: int | None
    access_token: str = field(repr=False)
    app_secret: str = field(repr=False)
    verify_token: str = field(repr=False)
    onyx_api_key: str | None = field(repr=False, default=None)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = MASK if value else None
            shown.append(f"{f.name}={value!r}")
        return f"BotConfig({', '.join(shown)})"

    __str__ = __repr__

    def summary(self) -> BotSummary:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in SECRET_FIELDS:
            data[name] = MASK if data[name] else None
        return BotSummary(**data, created_at=None, updated_at=None)


@dataclass(frozen=True)
class ChatConfigView:
    """The effective config for one chat; ``origin`` says which rule produced it."""

    id: int | None
    bot_id: int
    match_kind: str
    match_value: str | None
    persona_id: int | None
    document_sets: tuple[str, ...]
    respond_tag_only: bool
    allowed_senders: tuple[str, ...] | None
    answer_filters: Mapping[str, Any]
    follow_up_contacts: tuple[str, ...]
    show_sources: bool
    is_default: bool
    disabled: bool
    origin: Literal["exact", "default", "builtin"]


@dataclass(frozen=True)
class UserLink:
    """A WhatsApp user's link to an Onyx user, and their preferences."""

    id: int
    bot_id: int
    tenant_id: str
    user_id: str
    onyx_user_email: str | None
    language: str | None
    sources_on: bool
    opted_out: bool
    onyx_api_key: str | None = None  # always MASK or None in this view (write-only secret)


def _summary(row: WhatsAppBot) -> BotSummary:
    data = {f.name: getattr(row, f.name) for f in fields(BotSummary)}
    for name in SECRET_FIELDS:
        data[name] = MASK if data[name] else None
    return BotSummary(**data)


def _summary_select() -> Any:
    """Non-secret columns plus "is set" flags: listing never decrypts (works with a wrong key)."""
    plain = [
        getattr(WhatsAppBot, f.name) for f in fields(BotSummary) if f.name not in SECRET_FIELDS
    ]
    flags = [getattr(WhatsAppBot, name).is_not(None).label(name) for name in SECRET_FIELDS]
    return select(*plain, *flags)


def _summary_from_row(row: Mapping[str, Any]) -> BotSummary:
    data = {f.name: row[f.name] for f in fields(BotSummary)}
    for name in SECRET_FIELDS:
        data[name] = MASK if data[name] else None
    return BotSummary(**data)


def _config(row: WhatsAppBot) -> BotConfig:
    return BotConfig(**{f.name: getattr(row, f.name) for f in fields(BotConfig)})


def _chat_view(row: WhatsAppChatConfig, origin: Literal["exact", "default"]) -> ChatConfigView:
    return ChatConfigView(
        id=row.id,
        bot_id=row.bot_id,
        match_kind=row.match_kind,
        match_value=row.match_value,
        persona_id=row.persona_id,
        document_sets=tuple(row.document_sets or ()),
        respond_tag_only=row.respond_tag_only,
        allowed_senders=tuple(row.allowed_senders) if row.allowed_senders is not None else None,
        answer_filters=dict(row.answer_filters or {}),
        follow_up_contacts=tuple(row.follow_up_contacts or ()),
        show_sources=row.show_sources,
        is_default=row.is_default,
        disabled=row.disabled,
        origin=origin,
    )


def builtin_chat_config(bot_id: int) -> ChatConfigView:
    """The behaviour when a bot has no default config: answer everyone, show sources."""
    return ChatConfigView(
        id=None,
        bot_id=bot_id,
        match_kind="default",
        match_value=None,
        persona_id=None,
        document_sets=(),
        respond_tag_only=False,
        allowed_senders=None,
        answer_filters={},
        follow_up_contacts=(),
        show_sources=True,
        is_default=True,
        disabled=False,
        origin="builtin",
    )


# --- validation --------------------------------------------------------------------------------


def _check_tenant(tenant_id: str) -> None:
    if not TENANT_RE.match(tenant_id or ""):
        raise ValueError(
            f"invalid tenant id {tenant_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _check_pnid(phone_number_id: str) -> None:
    if not PHONE_NUMBER_ID_RE.match(phone_number_id or ""):
        raise ValueError(
            f"invalid phone_number_id {phone_number_id!r}: it is the numeric id Meta shows for "
            "the number (digits only), not the phone number itself"
        )


def _check_bot_fields(values: Mapping[str, Any]) -> None:
    """Validate the combination a bot ends up with (after an add or an update)."""
    backend = values.get("answer_backend")
    if backend not in ANSWER_BACKENDS:
        raise ValueError(f"answer_backend must be one of {', '.join(ANSWER_BACKENDS)}")
    url = values.get("onyx_base_url")
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        raise ValueError(f"onyx_base_url must be an http(s) URL, got {url!r}")
    if backend == "onyx" and not (url and values.get("onyx_api_key")):
        raise ValueError("answer_backend 'onyx' needs onyx_base_url and onyx_api_key")
    throughput = values.get("throughput_per_s")
    if throughput is None or not 0 < float(throughput) <= 1000:
        raise ValueError("throughput_per_s must be > 0 and <= 1000 (Meta's maximum)")
    for name in ("access_token", "app_secret", "verify_token"):
        if not values.get(name):
            raise ValueError(f"{name} must not be empty")
    for name, limit in SECRET_MAX_CHARS.items():
        if len(values.get(name) or "") > limit:  # the ciphertext must fit its column
            raise ValueError(f"{name} is longer than {limit} characters")
    for name in (
        "user_questions_per_minute",
        "tenant_questions_per_minute",
        "tenant_questions_per_day",
    ):
        quota = values.get(name)
        if quota is not None and int(quota) < 1:
            raise ValueError(f"{name} must be >= 1 (or unset for the default)")


async def read_config_version(session: AsyncSession) -> int:
    """The global config version (0 before the first write)."""
    value = await session.scalar(
        select(ConfigVersion.version).where(ConfigVersion.scope == GLOBAL_SCOPE)
    )
    return int(value or 0)


# --- bots --------------------------------------------------------------------------------------

BOT_UPDATABLE = frozenset(
    {
        "name",
        "enabled",
        "waba_id",
        "display_phone_number",
        "access_token",
        "app_secret",
        "verify_token",
        "answer_backend",
        "onyx_base_url",
        "onyx_api_key",
        "default_persona_id",
        "throughput_per_s",
        "user_questions_per_minute",
        "tenant_questions_per_minute",
        "tenant_questions_per_day",
    }
)


class BotRepository:
    """Bots (one per WhatsApp business number) with their encrypted secrets."""

    def __init__(self, sessions: Sessions, box: SecretBox) -> None:
        self.sessions = sessions
        self.box = box
        engine = sessions.kw.get("bind")
        if engine is None:
            raise ValueError("the session factory must be bound to an engine")
        attach_secret_box(engine, box)

    async def add_bot(
        self,
        *,
        tenant_id: str,
        phone_number_id: str,
        access_token: str,
        app_secret: str,
        verify_token: str,
        name: str | None = None,
        waba_id: str | None = None,
        display_phone_number: str | None = None,
        answer_backend: str = "local",
        onyx_base_url: str | None = None,
        onyx_api_key: str | None = None,
        default_persona_id: int | None = None,
        throughput_per_s: float = 80.0,
        user_questions_per_minute: int | None = None,
        tenant_questions_per_minute: int | None = None,
        tenant_questions_per_day: int | None = None,
        enabled: bool = True,
    ) -> BotSummary:
        """Add a bot; raises ``ValueError`` (``DuplicateError``) on bad input or a taken number."""
        _check_tenant(tenant_id)
        _check_pnid(phone_number_id)
        values: dict[str, Any] = {
            "tenant_id": tenant_id,
            "phone_number_id": phone_number_id,
            "access_token": access_token,
            "app_secret": app_secret,
            "verify_token": verify_token,
            "name": name or f"{tenant_id} {display_phone_number or phone_number_id}",
            "waba_id": waba_id,
            "display_phone_number": display_phone_number,
            "answer_backend": answer_backend,
            "onyx_base_url": onyx_base_url.rstrip("/") if onyx_base_url else None,
            "onyx_api_key": onyx_api_key,
            "default_persona_id": default_persona_id,
            "throughput_per_s": float(throughput_per_s),
            "user_questions_per_minute": user_questions_per_minute,
            "tenant_questions_per_minute": tenant_questions_per_minute,
            "tenant_questions_per_day": tenant_questions_per_day,
            "enabled": enabled,
        }
        _check_bot_fields(values)
        duplicate = DuplicateError(
            f"a bot for phone_number_id {phone_number_id} already exists: "
            "update it instead of adding it again"
        )
        async with self.sessions() as session:
            taken = await session.scalar(
                select(WhatsAppBot.id).where(WhatsAppBot.phone_number_id == phone_number_id)
            )
            if taken is not None:
                raise duplicate
            row = WhatsAppBot(**values)
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:  # lost a race with a concurrent add
                await session.rollback()
                raise duplicate from None
            await session.refresh(row)
            return _summary(row)

    async def list_bots(self, tenant_id: str | None = None) -> list[BotSummary]:
        """All bots (of one tenant), secrets masked."""
        stmt = _summary_select().order_by(WhatsAppBot.tenant_id, WhatsAppBot.id)
        if tenant_id is not None:
            stmt = stmt.where(WhatsAppBot.tenant_id == tenant_id)
        async with self.sessions() as session:
            return [_summary_from_row(row._mapping) for row in (await session.execute(stmt)).all()]

    async def get_by_phone_number_id(self, phone_number_id: str) -> BotConfig | None:
        """The bot with decrypted secrets, enabled or not."""
        async with self.sessions() as session:
            row = await session.scalar(
                select(WhatsAppBot).where(WhatsAppBot.phone_number_id == phone_number_id)
            )
            return _config(row) if row is not None else None

    async def get(self, bot_id: int) -> BotConfig | None:
        async with self.sessions() as session:
            row = await session.get(WhatsAppBot, bot_id)
            return _config(row) if row is not None else None

    async def get_summary(self, bot_id: int) -> BotSummary | None:
        """One bot, secrets masked; like :meth:`list_bots` it never decrypts anything."""
        async with self.sessions() as session:
            row = (await session.execute(_summary_select().where(WhatsAppBot.id == bot_id))).first()
            return _summary_from_row(row._mapping) if row is not None else None

    async def all_enabled(self) -> list[BotConfig]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(WhatsAppBot).where(WhatsAppBot.enabled.is_(True)).order_by(WhatsAppBot.id)
            )
            return [_config(row) for row in rows.all()]

    async def snapshot(self) -> tuple[int, list[BotConfig]]:
        """The config version and the enabled bots, read in one transaction."""
        async with self.sessions() as session, session.begin():
            version = await read_config_version(session)
            rows = await session.scalars(
                select(WhatsAppBot).where(WhatsAppBot.enabled.is_(True)).order_by(WhatsAppBot.id)
            )
            return version, [_config(row) for row in rows.all()]

    async def verify_tokens(self) -> set[str]:
        """Verify tokens of enabled bots (Meta's GET handshake does not say which number)."""
        return {bot.verify_token for bot in await self.all_enabled()}

    async def config_version(self) -> int:
        async with self.sessions() as session:
            return await read_config_version(session)

    async def update_bot(self, phone_number_id: str, **changes: Any) -> BotSummary:
        """Change some fields of a bot; unknown fields and invalid results raise ``ValueError``."""
        unknown = set(changes) - BOT_UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))} of a bot")
        async with self.sessions() as session:
            row = await self._row(session, phone_number_id)
            merged = {name: getattr(row, name) for name in BOT_UPDATABLE}
            merged.update(changes)
            if merged.get("onyx_base_url"):
                merged["onyx_base_url"] = str(merged["onyx_base_url"]).rstrip("/")
            _check_bot_fields(merged)
            for name in changes:
                setattr(row, name, merged[name])
            await session.commit()
            await session.refresh(row)
            return _summary(row)

    async def set_enabled(self, phone_number_id: str, enabled: bool) -> BotSummary:
        return await self.update_bot(phone_number_id, enabled=enabled)

    async def rotate_secret(
        self,
        phone_number_id: str,
        name: Literal["access_token", "app_secret", "verify_token", "onyx_api_key"],
        value: str,
    ) -> None:
        """Replace one secret (e.g. a renewed access token)."""
        if name not in SECRET_FIELDS:
            raise ValueError(f"{name!r} is not a secret field ({', '.join(SECRET_FIELDS)})")
        await self.update_bot(phone_number_id, **{name: value})

    async def reencrypt_all(self) -> int:
        """Re-encrypt every stored secret with the newest key; returns the bots rewritten.

        Run after putting a new key first in ONYX_WA_ENCRYPTION_KEY; then the old key can go.
        """
        from sqlalchemy.orm.attributes import flag_modified

        count = 0
        async with self.sessions() as session:
            for row in (await session.scalars(select(WhatsAppBot))).all():
                for name in SECRET_FIELDS:
                    if getattr(row, name) is not None:
                        flag_modified(row, name)
                count += 1
            await session.commit()
        return count

    async def delete_bot(self, phone_number_id: str) -> bool:
        """Delete a bot and (by cascade) its chat configs and user links."""
        async with self.sessions() as session:
            row = await session.scalar(
                select(WhatsAppBot).where(WhatsAppBot.phone_number_id == phone_number_id)
            )
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
            return True

    @staticmethod
    async def _row(session: AsyncSession, phone_number_id: str) -> WhatsAppBot:
        row = await session.scalar(
            select(WhatsAppBot).where(WhatsAppBot.phone_number_id == phone_number_id)
        )
        if row is None:
            raise NotFoundError(f"no bot for phone_number_id {phone_number_id}")
        return row


# --- chat configs ------------------------------------------------------------------------------


class ChatConfigRepository:
    """Per-chat overrides; the effective config is exact match, else bot default, else built-in."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    async def add(
        self,
        bot_id: int,
        *,
        match_kind: Literal["wa_id", "group", "default"],
        match_value: str | None = None,
        persona_id: int | None = None,
        document_sets: Sequence[str] = (),
        respond_tag_only: bool = False,
        allowed_senders: Sequence[str] | None = None,
        answer_filters: Mapping[str, Any] | None = None,
        follow_up_contacts: Sequence[str] = (),
        show_sources: bool = True,
        disabled: bool = False,
    ) -> ChatConfigView:
        """Add a chat config; a second default or a repeated match raises ``DuplicateError``."""
        if match_kind not in ("wa_id", "group", "default"):
            raise ValueError("match_kind must be wa_id, group or default")
        is_default = match_kind == "default"
        if is_default and match_value is not None:
            raise ValueError("a default chat config matches every chat: give no match_value")
        if not is_default and not match_value:
            raise ValueError(f"a {match_kind} chat config needs the {match_kind} to match")
        row = WhatsAppChatConfig(
            bot_id=bot_id,
            match_kind=match_kind,
            match_value=match_value,
            persona_id=persona_id,
            document_sets=list(document_sets),
            respond_tag_only=respond_tag_only,
            allowed_senders=list(allowed_senders) if allowed_senders is not None else None,
            answer_filters=dict(answer_filters or {}),
            follow_up_contacts=list(follow_up_contacts),
            show_sources=show_sources,
            is_default=is_default,
            disabled=disabled,
        )
        async with self.sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError as exc:
                await session.rollback()
                if "foreign key" in str(exc.orig).lower():
                    raise NotFoundError(f"no bot with id {bot_id}") from None
                what = "a default chat config" if is_default else f"{match_kind} {match_value}"
                raise DuplicateError(f"bot {bot_id} already has {what}") from None
            return _chat_view(row, "default" if is_default else "exact")

    async def get(self, config_id: int) -> ChatConfigView | None:
        async with self.sessions() as session:
            row = await session.get(WhatsAppChatConfig, config_id)
            if row is None:
                return None
            return _chat_view(row, "default" if row.is_default else "exact")

    async def list_for_bot(self, bot_id: int) -> list[ChatConfigView]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(WhatsAppChatConfig)
                .where(WhatsAppChatConfig.bot_id == bot_id)
                .order_by(WhatsAppChatConfig.id)
            )
            return [_chat_view(r, "default" if r.is_default else "exact") for r in rows.all()]

    async def for_chat(self, bot_id: int, chat_id: str, is_group: bool) -> ChatConfigView:
        """The effective config: exact match, else the bot's default, else the built-in one."""
        kind = "group" if is_group else "wa_id"
        async with self.sessions() as session:
            rows = (
                await session.scalars(
                    select(WhatsAppChatConfig).where(
                        WhatsAppChatConfig.bot_id == bot_id,
                        (
                            (WhatsAppChatConfig.match_kind == kind)
                            & (WhatsAppChatConfig.match_value == chat_id)
                        )
                        | WhatsAppChatConfig.is_default.is_(True),
                    )
                )
            ).all()
        exact = next((r for r in rows if not r.is_default), None)
        if exact is not None:
            return _chat_view(exact, "exact")
        default = next((r for r in rows if r.is_default), None)
        if default is not None:
            return _chat_view(default, "default")
        return builtin_chat_config(bot_id)

    async def update(self, config_id: int, **changes: Any) -> ChatConfigView:
        allowed = {
            "persona_id",
            "document_sets",
            "respond_tag_only",
            "allowed_senders",
            "answer_filters",
            "follow_up_contacts",
            "show_sources",
            "disabled",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))} of a chat config")
        async with self.sessions() as session:
            row = await session.get(WhatsAppChatConfig, config_id)
            if row is None:
                raise NotFoundError(f"no chat config with id {config_id}")
            for name, value in changes.items():
                if name in ("document_sets", "follow_up_contacts"):
                    value = list(value)
                elif name == "allowed_senders" and value is not None:
                    value = list(value)
                elif name == "answer_filters":
                    value = dict(value or {})
                setattr(row, name, value)
            await session.commit()
            return _chat_view(row, "default" if row.is_default else "exact")

    async def delete(self, config_id: int) -> bool:
        async with self.sessions() as session:
            row = await session.get(WhatsAppChatConfig, config_id)
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
            return True


# --- user links --------------------------------------------------------------------------------


def _link(row: WhatsAppUserLink) -> UserLink:
    data = {f.name: getattr(row, f.name) for f in fields(UserLink)}
    data["onyx_api_key"] = MASK if data["onyx_api_key"] else None
    return UserLink(**data)


class UserLinkRepository:
    """WhatsApp user ↔ Onyx user links and per-user preferences."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    async def get(self, bot_id: int, user_id: str) -> UserLink | None:
        async with self.sessions() as session:
            row = await session.scalar(
                select(WhatsAppUserLink).where(
                    WhatsAppUserLink.bot_id == bot_id, WhatsAppUserLink.user_id == user_id
                )
            )
            return _link(row) if row is not None else None

    async def link_index(self, bot_id: int) -> dict[str, tuple[str | None, bool]]:
        """Every linked user of a bot: ``user_id -> (onyx_user_email, has_own_onyx_key)``.

        Why: workers look a link up for every message; one query per bot (re-run when the
        config version changes) replaces one query per new conversation. Keys stay encrypted
        and unread here; only whether one exists.
        """
        async with self.sessions() as session:
            rows = await session.execute(
                select(
                    WhatsAppUserLink.user_id,
                    WhatsAppUserLink.onyx_user_email,
                    WhatsAppUserLink.onyx_api_key.is_not(None),
                ).where(WhatsAppUserLink.bot_id == bot_id)
            )
            return {user: (email, bool(has_key)) for user, email, has_key in rows.all()}

    async def upsert(
        self,
        bot_id: int,
        user_id: str,
        *,
        onyx_user_email: str | None = _UNSET,
        language: str | None = _UNSET,
        sources_on: bool = _UNSET,
        opted_out: bool = _UNSET,
        onyx_api_key: str | None = _UNSET,
    ) -> UserLink:
        """Create or change a link; fields not given keep their value (or the default)."""
        if not user_id or len(user_id) > 128:
            raise ValueError("user_id must be a wa_id or BSUID of 1-128 characters")
        if onyx_user_email not in (_UNSET, None) and "@" not in onyx_user_email:
            raise ValueError(f"onyx_user_email {onyx_user_email!r} is not an email address")
        changes = {
            k: v
            for k, v in {
                "onyx_user_email": onyx_user_email,
                "language": language,
                "sources_on": sources_on,
                "opted_out": opted_out,
                "onyx_api_key": onyx_api_key or None if onyx_api_key is not _UNSET else _UNSET,
            }.items()
            if v is not _UNSET
        }
        for attempt in range(2):  # a concurrent insert of the same user makes us retry once
            async with self.sessions() as session:
                row = await session.scalar(
                    select(WhatsAppUserLink).where(
                        WhatsAppUserLink.bot_id == bot_id, WhatsAppUserLink.user_id == user_id
                    )
                )
                if row is None:
                    bot = await session.get(WhatsAppBot, bot_id)
                    if bot is None:
                        raise NotFoundError(f"no bot with id {bot_id}")
                    row = WhatsAppUserLink(bot_id=bot_id, tenant_id=bot.tenant_id, user_id=user_id)
                    session.add(row)
                for name, value in changes.items():
                    setattr(row, name, value)
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    if attempt:
                        raise
                    continue
                await session.refresh(row)
                return _link(row)
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_for_bot(
        self, bot_id: int, *, after: str | None = None, limit: int = 100
    ) -> list[UserLink]:
        """A bot's links ordered by user id; ``after`` is the last user id of the previous page."""
        stmt = (
            select(WhatsAppUserLink)
            .where(WhatsAppUserLink.bot_id == bot_id)
            .order_by(WhatsAppUserLink.user_id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(WhatsAppUserLink.user_id > after)
        async with self.sessions() as session:
            return [_link(row) for row in (await session.scalars(stmt)).all()]

    async def onyx_api_key(self, bot_id: int, user_id: str) -> str | None:
        """The linked user's own Onyx key, decrypted: only for the answer stage's requests."""
        async with self.sessions() as session:
            return await session.scalar(
                select(WhatsAppUserLink.onyx_api_key).where(
                    WhatsAppUserLink.bot_id == bot_id, WhatsAppUserLink.user_id == user_id
                )
            )

    async def delete_user(self, bot_id: int, user_id: str) -> bool:
        """Forget a user (link and preferences); True when something was deleted."""
        async with self.sessions() as session:
            row = await session.scalar(
                select(WhatsAppUserLink).where(
                    WhatsAppUserLink.bot_id == bot_id, WhatsAppUserLink.user_id == user_id
                )
            )
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
            return True


async def config_version(sessions: Sessions) -> int:
    """The global config version, for caches that only hold a session factory."""
    async with sessions() as session:
        return await read_config_version(session)
