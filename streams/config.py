"""Bot and chat configuration for the workers, from the database through caches.

Why caches: every inbound message needs its bot and chat config, and a database query per event
would cap throughput at the database's (it did: two queries per new conversation were 70% of the
streams worker's time). Bots come from the store's ``BotDirectory`` snapshot; a bot's chat
configs and user links are loaded once per bot and matched in memory, so memory does not grow
with the number of chats. All are dropped when the store's config version changes (checked at
most every ``bot_cache_ttl_s``), so an admin's change reaches running workers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from onyx_wa.settings import Settings
from streams.classify import ChatRule

MISS_REFRESH_S = 1.0


@dataclass(frozen=True)
class ChatSettings:
    """What the conversation stage needs from a chat config."""

    rule: ChatRule
    persona_id: int | None = None
    document_sets: tuple[str, ...] = ()
    source_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    time_cutoff_days: int | None = None
    show_sources: bool = True


DEFAULT_CHAT = ChatSettings(
    rule=ChatRule(respond_tag_only=False, allowed_senders=None, disabled=False)
)


def chat_settings_from_view(view: Any, bot: Any) -> ChatSettings:
    """Map the store's chat config view (or None) onto :class:`ChatSettings`."""
    if view is None:
        return ChatSettings(
            rule=DEFAULT_CHAT.rule, persona_id=getattr(bot, "default_persona_id", None)
        )
    filters = dict(getattr(view, "answer_filters", None) or {})
    allowed = getattr(view, "allowed_senders", None)
    return ChatSettings(
        rule=ChatRule(
            respond_tag_only=bool(getattr(view, "respond_tag_only", False)),
            allowed_senders=frozenset(allowed) if allowed else None,
            disabled=bool(getattr(view, "disabled", False)),
        ),
        persona_id=getattr(view, "persona_id", None) or getattr(bot, "default_persona_id", None),
        document_sets=tuple(getattr(view, "document_sets", None) or ()),
        source_types=tuple(filters.get("source_types") or filters.get("source_type") or ()),
        tags=tuple(filters.get("tags") or ()),
        time_cutoff_days=filters.get("time_cutoff_days"),
        show_sources=bool(getattr(view, "show_sources", True)),
    )


@dataclass
class ChatIndex:
    """A bot's chat configs matched in memory: exact (kind, id) first, then the default."""

    exact: dict[tuple[str, str], ChatSettings]
    default: ChatSettings

    @classmethod
    def build(cls, views: list[Any], bot: Any) -> ChatIndex:
        exact = {
            (v.match_kind, v.match_value): chat_settings_from_view(v, bot)
            for v in views
            if not v.is_default and v.match_value
        }
        default_view = next((v for v in views if v.is_default), None)
        return cls(exact, chat_settings_from_view(default_view, bot))

    def lookup(self, chat_id: str, is_group: bool) -> ChatSettings:
        return self.exact.get(("group" if is_group else "wa_id", chat_id), self.default)


@dataclass
class BotView:
    """The parts of a bot the stages use; secrets stay inside (never logged, masked repr)."""

    config: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.config, name)

    @property
    def names(self) -> tuple[str, ...]:
        name = getattr(self.config, "name", None)
        return (name,) if name else ()

    @property
    def user_questions_per_minute(self) -> int | None:
        return getattr(self.config, "user_questions_per_minute", None)

    def __repr__(self) -> str:
        return f"BotView(tenant={self.config.tenant_id!r}, number={self.config.phone_number_id!r})"


@dataclass
class ConfigLookup:
    """Bots by phone_number_id and chat settings by chat, cached, invalidated on change."""

    directory: Any  # store.cache.BotDirectory
    chats: Any  # store.repo.ChatConfigRepository
    users: Any  # store.repo.UserLinkRepository
    ttl_s: float = 30.0
    sessions: Any = None  # the session factory, for stages that keep shared counters
    # per bot, not per chat or user: memory stays flat however many conversations there are
    _chat_index: dict[Any, ChatIndex] = field(default_factory=dict)
    _link_index: dict[Any, dict[str, tuple[str | None, bool]]] = field(default_factory=dict)
    _key_cache: dict[tuple[Any, str], str | None] = field(default_factory=dict, repr=False)
    _version: int | None = None
    _checked: float = 0.0
    _forced: float = 0.0
    _refreshing: asyncio.Future[Any] | None = None

    async def _maybe_invalidate(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.ttl_s and self._version is not None:
            return
        self._checked = now
        await self.directory.refresh()
        version = getattr(self.directory, "version", None)
        if version != self._version:
            self._version = version
            self._chat_index.clear()
            self._link_index.clear()
            self._key_cache.clear()

    async def bot(self, phone_number_id: str) -> BotView | None:
        await self._maybe_invalidate()
        config = await self.directory.get(phone_number_id)
        if config is None:
            # a number we do not know yet may be a bot added a moment ago: look again now
            # rather than wait for the cache TTL and drop its work. Concurrent misses share one
            # refresh, and a refresh is forced at most once a second.
            if self._refreshing is None and time.monotonic() - self._forced > MISS_REFRESH_S:
                self._forced = time.monotonic()
                self._refreshing = asyncio.ensure_future(self.directory.refresh(force=True))
            if self._refreshing is not None:
                try:
                    await asyncio.shield(self._refreshing)
                finally:
                    if self._refreshing is not None and self._refreshing.done():
                        self._refreshing = None
                        self._version = None
                config = await self.directory.get(phone_number_id)
        return BotView(config) if config is not None else None

    async def chat(self, bot: BotView | None, chat_id: str, is_group: bool) -> ChatSettings:
        if bot is None:
            return DEFAULT_CHAT
        await self._maybe_invalidate()
        index = self._chat_index.get(bot.id)
        if index is None:
            index = ChatIndex.build(await self.chats.list_for_bot(bot.id), bot)
            self._chat_index[bot.id] = index
        return index.lookup(chat_id, is_group)

    async def _links(self, bot: BotView) -> dict[str, tuple[str | None, bool]]:
        await self._maybe_invalidate()
        links = self._link_index.get(bot.id)
        if links is None:
            links = self._link_index[bot.id] = await self.users.link_index(bot.id)
        return links

    async def linked_email(self, bot: BotView | None, sender_id: str) -> str | None:
        if bot is None:
            return None
        link = (await self._links(bot)).get(sender_id)
        return link[0] if link else None

    async def linked_onyx_key(self, bot: BotView | None, sender_id: str) -> str | None:
        """The sender's own Onyx key when an admin linked one (answers then use their access)."""
        if bot is None:
            return None
        link = (await self._links(bot)).get(sender_id)
        if not link or not link[1]:
            return None
        key = (bot.id, sender_id)
        if key not in self._key_cache:
            self._key_cache[key] = await self.users.onyx_api_key(bot.id, sender_id)
        return self._key_cache[key]

    def forget_user(self, user_id: str) -> None:
        """Drop a forgotten user from this worker's caches (others follow the config version)."""
        for links in self._link_index.values():
            links.pop(user_id, None)
        for cached in [k for k in self._key_cache if k[1] == user_id]:
            del self._key_cache[cached]

    async def aclose(self) -> None:
        return None


async def open_config_lookup(settings: Settings) -> tuple[ConfigLookup, Any]:
    """Connect to the database and build the lookup; returns it with the engine to dispose."""
    from store.cache import BotDirectory
    from store.crypto import SecretBox, resolve_encryption_key
    from store.db import check_database, make_engine, session_factory
    from store.repo import BotRepository, ChatConfigRepository, UserLinkRepository

    await check_database(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    sessions = session_factory(engine)
    box = SecretBox(resolve_encryption_key(settings))
    bots = BotRepository(sessions, box)
    directory = BotDirectory(bots, ttl_s=settings.bot_cache_ttl_s)
    await directory.refresh(force=True)
    lookup = ConfigLookup(
        directory=directory,
        chats=ChatConfigRepository(sessions),
        users=UserLinkRepository(sessions),
        ttl_s=settings.bot_cache_ttl_s,
        sessions=sessions,
    )
    return lookup, engine
