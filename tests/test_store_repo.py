"""Repositories: bots (validation, masking, updates), chat config precedence, user links."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.exc import IntegrityError

from store.models import WhatsAppChatConfig
from store.repo import DuplicateError, NotFoundError, config_version

SECRET = "s3cr3t-RECOGNIZABLE"


def _pnid() -> str:
    return str(uuid.uuid4().int)[:15]


async def _bot(store, tenant: str = "acme", pnid: str | None = None, **kw):
    return await store.bots.add_bot(
        tenant_id=tenant,
        phone_number_id=pnid or _pnid(),
        access_token=f"tok-{SECRET}",
        app_secret=f"app-{SECRET}",
        verify_token=kw.pop("verify_token", f"verify-{uuid.uuid4().hex}"),
        **kw,
    )


async def test_add_and_duplicate_phone_number_id(store) -> None:
    bot = await _bot(store, pnid="123456789012345", name="Support")
    assert bot.id > 0 and bot.name == "Support" and bot.enabled
    assert bot.throughput_per_s == 80.0 and bot.answer_backend == "local"
    with pytest.raises(DuplicateError, match="123456789012345 already exists"):
        await _bot(store, tenant="other", pnid="123456789012345")
    assert len(await store.bots.list_bots()) == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pnid": "+49 151 234"}, "digits only"),
        ({"tenant": "bad tenant!"}, "invalid tenant id"),
        ({"tenant": ""}, "invalid tenant id"),
        ({"answer_backend": "gpt"}, "answer_backend must be"),
        ({"answer_backend": "onyx"}, "needs onyx_base_url and onyx_api_key"),
        ({"onyx_base_url": "ftp://x"}, "http"),
        ({"throughput_per_s": 0}, "throughput_per_s"),
        ({"throughput_per_s": 5000}, "throughput_per_s"),
        ({"verify_token": ""}, "verify_token must not be empty"),
        ({"user_questions_per_minute": 0}, "user_questions_per_minute"),
        ({"verify_token": "v" * 601}, "verify_token is longer than 600"),
    ],
)
async def test_add_validation(store, kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        await _bot(store, **kw)
    assert await store.bots.list_bots() == []


async def test_list_is_masked_and_config_repr_hides_secrets(store) -> None:
    await _bot(
        store,
        tenant="t-a",
        answer_backend="onyx",
        onyx_base_url="https://onyx.example.com/",
        onyx_api_key=f"key-{SECRET}",
        default_persona_id=3,
    )
    other = await _bot(store, tenant="t-b")
    rows = await store.bots.list_bots("t-a")
    assert [r.tenant_id for r in rows] == ["t-a"]
    summary = rows[0]
    assert summary.onyx_base_url == "https://onyx.example.com"
    assert summary.access_token == "********" and summary.onyx_api_key == "********"
    assert SECRET not in repr(summary) and SECRET not in str(summary.to_dict())
    assert summary.created_at is not None
    plain = await store.bots.get_by_phone_number_id(other.phone_number_id)
    assert plain is not None and plain.app_secret == f"app-{SECRET}"
    assert plain.onyx_api_key is None
    assert SECRET not in repr(plain) and SECRET not in str(plain) and SECRET not in f"{plain}"
    assert "onyx_api_key=None" in repr(plain)
    assert SECRET not in repr(plain.summary())
    assert await store.bots.get_by_phone_number_id("999") is None


async def test_enable_update_rotate(store) -> None:
    bot = await _bot(store, verify_token="v-one")
    assert await store.bots.verify_tokens() == {"v-one"}
    await store.bots.set_enabled(bot.phone_number_id, False)
    assert await store.bots.all_enabled() == []
    assert await store.bots.verify_tokens() == set()
    assert (await store.bots.get_by_phone_number_id(bot.phone_number_id)).enabled is False
    await store.bots.set_enabled(bot.phone_number_id, True)
    await store.bots.rotate_secret(bot.phone_number_id, "access_token", "new-token")
    updated = await store.bots.update_bot(
        bot.phone_number_id, throughput_per_s=20, tenant_questions_per_day=100
    )
    assert updated.throughput_per_s == 20 and updated.tenant_questions_per_day == 100
    config = (await store.bots.all_enabled())[0]
    assert config.access_token == "new-token" and config.tenant_questions_per_day == 100
    with pytest.raises(ValueError, match="needs onyx_base_url"):
        await store.bots.update_bot(bot.phone_number_id, answer_backend="onyx")
    with pytest.raises(ValueError, match="cannot update tenant_id"):
        await store.bots.update_bot(bot.phone_number_id, tenant_id="x")
    with pytest.raises(ValueError, match="not a secret field"):
        await store.bots.rotate_secret(bot.phone_number_id, "name", "x")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        await store.bots.set_enabled("424242", False)
    assert (await store.bots.get(bot.id)).answer_backend == "local"  # failed update left no trace


async def test_config_version_bumps_on_config_and_link_writes_only(store) -> None:
    assert await store.bots.config_version() == 0
    bot = await _bot(store)
    v1 = await store.bots.config_version()
    assert v1 == 1
    await store.chats.add(bot.id, match_kind="default")
    v2 = await config_version(store.sessions)
    assert v2 == 2
    await store.bots.update_bot(bot.phone_number_id, name=bot.name)  # no real change
    assert await store.bots.config_version() == 2
    # user links are cached by workers too (linked identity): a change must reach them
    await store.users.upsert(bot.id, "4915100000001", language="de")
    assert await store.bots.config_version() == 3
    await store.bots.set_enabled(bot.phone_number_id, False)
    assert await store.bots.config_version() == 4
    await store.bots.delete_bot(bot.phone_number_id)
    assert await store.bots.config_version() == 5


async def test_chat_config_precedence(store) -> None:
    bot = await _bot(store)
    builtin = await store.chats.for_chat(bot.id, "4915100000002", is_group=False)
    assert builtin.origin == "builtin" and builtin.id is None and builtin.show_sources
    default = await store.chats.add(bot.id, match_kind="default", persona_id=7, show_sources=False)
    exact = await store.chats.add(
        bot.id,
        match_kind="wa_id",
        match_value="4915100000002",
        persona_id=9,
        document_sets=["hr"],
        allowed_senders=["a"],
        answer_filters={"source_types": ["web"]},
    )
    group = await store.chats.add(
        bot.id, match_kind="group", match_value="G1", respond_tag_only=True, disabled=True
    )
    got = await store.chats.for_chat(bot.id, "4915100000002", is_group=False)
    assert got.id == exact.id and got.origin == "exact" and got.persona_id == 9
    assert got.document_sets == ("hr",) and got.allowed_senders == ("a",)
    assert got.answer_filters == {"source_types": ["web"]}
    other = await store.chats.for_chat(bot.id, "4915100000003", is_group=False)
    assert other.id == default.id and other.origin == "default" and not other.show_sources
    # a group id equal to a wa_id does not match the wa_id config (kinds are distinct)
    assert (await store.chats.for_chat(bot.id, "4915100000002", is_group=True)).id == default.id
    in_group = await store.chats.for_chat(bot.id, "G1", is_group=True)
    assert in_group.id == group.id and in_group.disabled and in_group.respond_tag_only
    assert [c.id for c in await store.chats.list_for_bot(bot.id)] == [
        default.id,
        exact.id,
        group.id,
    ]
    updated = await store.chats.update(exact.id, persona_id=None, document_sets=("a", "b"))
    assert updated.persona_id is None and updated.document_sets == ("a", "b")
    assert await store.chats.delete(exact.id)
    assert not await store.chats.delete(exact.id)
    again = await store.chats.for_chat(bot.id, "4915100000002", is_group=False)
    assert again.id == default.id


async def test_chat_config_validation(store) -> None:
    bot = await _bot(store)
    with pytest.raises(ValueError, match="no match_value"):
        await store.chats.add(bot.id, match_kind="default", match_value="x")
    with pytest.raises(ValueError, match="needs the group"):
        await store.chats.add(bot.id, match_kind="group")
    with pytest.raises(ValueError, match="match_kind"):
        await store.chats.add(bot.id, match_kind="channel", match_value="x")  # type: ignore[arg-type]
    await store.chats.add(bot.id, match_kind="group", match_value="G")
    with pytest.raises(DuplicateError, match="group G"):
        await store.chats.add(bot.id, match_kind="group", match_value="G")
    with pytest.raises(NotFoundError):
        await store.chats.add(987654, match_kind="group", match_value="G")
    with pytest.raises(NotFoundError):
        await store.chats.update(987654, disabled=True)


async def test_at_most_one_default_per_bot_is_enforced_by_the_database(store) -> None:
    bot = await _bot(store)
    second_bot = await _bot(store)
    await store.chats.add(bot.id, match_kind="default")
    await store.chats.add(second_bot.id, match_kind="default")  # per bot, not global
    with pytest.raises(DuplicateError, match="already has a default"):
        await store.chats.add(bot.id, match_kind="default")
    # bypassing the repository: the partial unique index itself refuses
    async with store.sessions() as session:
        session.add(
            WhatsAppChatConfig(
                bot_id=bot.id, match_kind="default", match_value=None, is_default=True
            )
        )
        with pytest.raises(IntegrityError):
            await session.commit()
    # and the check constraint refuses an inconsistent default flag
    async with store.sessions() as session:
        session.add(
            WhatsAppChatConfig(bot_id=bot.id, match_kind="group", match_value="G", is_default=True)
        )
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_user_link_upsert_get_delete(store) -> None:
    bot = await _bot(store, tenant="links")
    assert await store.users.get(bot.id, "US.1349") is None
    link = await store.users.upsert(bot.id, "US.1349", onyx_user_email="a@example.com")
    assert link.tenant_id == "links" and link.sources_on and not link.opted_out
    assert link.language is None
    changed = await store.users.upsert(bot.id, "US.1349", language="de", opted_out=True)
    assert changed.id == link.id and changed.onyx_user_email == "a@example.com"
    assert changed.language == "de" and changed.opted_out
    got = await store.users.get(bot.id, "US.1349")
    assert got == changed
    with pytest.raises(ValueError, match="not an email"):
        await store.users.upsert(bot.id, "US.1349", onyx_user_email="nope")
    with pytest.raises(NotFoundError):
        await store.users.upsert(987654, "x")
    assert await store.users.delete_user(bot.id, "US.1349")
    assert not await store.users.delete_user(bot.id, "US.1349")
    assert await store.users.get(bot.id, "US.1349") is None


async def test_deleting_a_bot_cascades(store) -> None:
    bot = await _bot(store)
    await store.chats.add(bot.id, match_kind="default")
    await store.users.upsert(bot.id, "4915100000009", sources_on=False)
    assert await store.bots.delete_bot(bot.phone_number_id)
    assert not await store.bots.delete_bot(bot.phone_number_id)
    assert await store.chats.list_for_bot(bot.id) == []
    assert await store.users.get(bot.id, "4915100000009") is None
