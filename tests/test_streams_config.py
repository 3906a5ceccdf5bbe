"""The workers' config lookup matches the store's rules and sees admin changes.

It loads a bot's chat configs and user links once (per config version) and matches in memory;
these tests pin that the in-memory match gives what ``ChatConfigRepository.for_chat`` gives,
and that a change in the database reaches it once the version moves.
"""

from __future__ import annotations

import uuid

from store.cache import BotDirectory
from streams.config import ConfigLookup, chat_settings_from_view


async def _lookup_and_bot(store):
    pnid = str(uuid.uuid4().int)[:15]
    await store.bots.add_bot(
        tenant_id="acme", phone_number_id=pnid, app_secret="s", verify_token="v",
        access_token="a", default_persona_id=3,
    )  # fmt: skip
    directory = BotDirectory(store.bots, ttl_s=0)
    await directory.refresh(force=True)
    lookup = ConfigLookup(directory=directory, chats=store.chats, users=store.users, ttl_s=0)
    return lookup, await lookup.bot(pnid)


async def test_in_memory_match_equals_the_store_rules(store) -> None:
    lookup, bot = await _lookup_and_bot(store)
    chats = [("4915100000002", False), ("4915100000003", False), ("G1", True), ("G2", True)]

    async def same_as_store() -> None:
        for chat_id, is_group in chats:
            view = await store.chats.for_chat(bot.id, chat_id, is_group)
            expected = chat_settings_from_view(view, bot)
            assert await lookup.chat(bot, chat_id, is_group) == expected, (chat_id, is_group)

    await same_as_store()  # built-in: everyone answered, the bot's default persona
    assert (await lookup.chat(bot, "4915100000002", False)).persona_id == 3
    await store.chats.add(bot.id, match_kind="default", persona_id=7, show_sources=False)
    await store.chats.add(
        bot.id, match_kind="wa_id", match_value="4915100000002", persona_id=9,
        document_sets=["hr"], answer_filters={"source_types": ["web"]},
    )  # fmt: skip
    await store.chats.add(bot.id, match_kind="group", match_value="G1", respond_tag_only=True)
    await same_as_store()  # the version moved: the new configs are seen
    assert (await lookup.chat(bot, "4915100000002", False)).document_sets == ("hr",)
    assert (await lookup.chat(bot, "4915100000002", True)).persona_id == 7  # kinds are distinct
    assert (await lookup.chat(bot, "G1", True)).rule.respond_tag_only


async def test_user_links_and_own_keys_are_seen_after_a_change(store) -> None:
    lookup, bot = await _lookup_and_bot(store)
    assert await lookup.linked_email(bot, "4915100000009") is None
    await store.users.upsert(bot.id, "4915100000009", onyx_user_email="ana@example.com")
    assert await lookup.linked_email(bot, "4915100000009") == "ana@example.com"
    assert await lookup.linked_onyx_key(bot, "4915100000009") is None
    await store.users.upsert(bot.id, "4915100000009", onyx_api_key="key-ana")
    assert await lookup.linked_onyx_key(bot, "4915100000009") == "key-ana"
    assert await lookup.linked_email(bot, "4915100000010") is None
    await store.users.delete_user(bot.id, "4915100000009")
    assert await lookup.linked_email(bot, "4915100000009") is None
    assert await lookup.linked_onyx_key(bot, "4915100000009") is None
