"""Secrets at rest: Fernet box, key rotation, key resolution, and nothing readable in the DB."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from onyx_wa.settings import SettingsError, load_settings
from store.crypto import (
    EncryptedString,
    SecretBox,
    SecretDecryptionError,
    resolve_encryption_key,
)
from store.db import make_engine, session_factory
from store.repo import BotRepository

SECRETS = {
    "access_token": "EAAG-access-token-RECOGNIZABLE-1111",
    "app_secret": "app-secret-RECOGNIZABLE-2222",
    "verify_token": "verify-token-RECOGNIZABLE-3333",
    "onyx_api_key": "on_api-key-RECOGNIZABLE-4444",
}
# Explicit, so the tests do not depend on the environment they run in.
EMBEDDED = {"encryption_key": None, "database_url": None, "kafka_bootstrap_servers": None}


def _file_bytes(*paths: Path) -> bytes:
    """Every byte SQLite wrote (main file and write-ahead log)."""
    return b"".join(p.read_bytes() for p in paths if p.exists())


def _key() -> str:
    return Fernet.generate_key().decode()


async def _add_bot(bots: BotRepository, pnid: str) -> None:
    await bots.add_bot(
        tenant_id="acme",
        phone_number_id=pnid,
        answer_backend="onyx",
        onyx_base_url="https://onyx.example.com/",
        **SECRETS,
    )


def test_box_round_trip_and_tokens_differ() -> None:
    box = SecretBox(_key())
    first, second = box.encrypt("hello ✓"), box.encrypt("hello ✓")
    assert first != second  # random IV: equal secrets are not linkable
    assert "hello" not in first
    assert box.decrypt(first) == "hello ✓"
    assert "key" not in repr(box).lower() or "keys=1" in repr(box)


def test_wrong_key_is_a_clear_error_never_garbage() -> None:
    token = SecretBox(_key()).encrypt("secret")
    with pytest.raises(SecretDecryptionError, match="ONYX_WA_ENCRYPTION_KEY"):
        SecretBox(_key()).decrypt(token)
    with pytest.raises(SecretDecryptionError):
        SecretBox(_key()).decrypt("not-a-token")


def test_rotation_newest_key_first() -> None:
    old, new = _key(), _key()
    token = SecretBox(old).encrypt("s")
    both = SecretBox(f"{new}, {old}")
    assert both.decrypt(token) == "s"
    assert not both.is_current(token)
    rotated = both.rotate(token)
    assert both.is_current(rotated)
    assert SecretBox(new).decrypt(rotated) == "s"
    with pytest.raises(SecretDecryptionError):
        SecretBox(old).decrypt(rotated)
    with pytest.raises(SecretDecryptionError):
        SecretBox(_key()).rotate(token)


@pytest.mark.parametrize("bad", ["", " , ", "short", "x" * 44])
def test_invalid_key_is_a_settings_error(bad: str) -> None:
    with pytest.raises(SettingsError, match="ONYX_WA_ENCRYPTION_KEY"):
        SecretBox(bad)


def test_embedded_key_is_generated_once_with_mode_0600(tmp_path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", **EMBEDDED)
    assert settings.embedded and settings.database_url is None
    key = resolve_encryption_key(settings)
    path = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert resolve_encryption_key(settings) == key  # reused, not regenerated
    SecretBox(key)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_configured_key_wins_and_is_validated(tmp_path) -> None:
    key = _key()
    settings = load_settings(data_dir=tmp_path, encryption_key=key)
    assert resolve_encryption_key(settings) == key
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(SettingsError, match="not a valid Fernet key"):
        resolve_encryption_key(load_settings(data_dir=tmp_path, encryption_key="nope"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"database_url": "postgresql://db/onyx"},
        {"kafka_bootstrap_servers": "kafka:9092"},
    ],
)
def test_non_embedded_without_key_is_a_one_line_settings_error(tmp_path, overrides) -> None:
    settings = load_settings(data_dir=tmp_path, **{**EMBEDDED, **overrides})
    with pytest.raises(SettingsError) as info:
        resolve_encryption_key(settings)
    message = str(info.value)
    assert "\n" not in message
    assert "ONYX_WA_ENCRYPTION_KEY" in message
    assert "Fernet.generate_key().decode()" in message
    assert not (tmp_path / "secret.key").exists()


def test_corrupt_key_file_is_a_settings_error(tmp_path) -> None:
    (tmp_path / "secret.key").write_text("garbage\n")
    with pytest.raises(SettingsError, match="secret.key"):
        resolve_encryption_key(load_settings(data_dir=tmp_path, **EMBEDDED))


async def test_secrets_are_not_readable_at_rest(each_store) -> None:
    store = each_store
    await _add_bot(store.bots, "1000000001")
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT access_token, app_secret, verify_token, onyx_api_key FROM wa_bot "
                    "WHERE phone_number_id = '1000000001'"
                )
            )
        ).one()
    raw = " ".join(row)
    for secret in SECRETS.values():
        assert secret not in raw
    assert [store.box.decrypt(v) for v in row] == list(SECRETS.values())
    if store.db.kind == "sqlite":
        await store.engine.dispose()  # flush WAL handles; then read every file byte
        path = store.db.url.split("///", 1)[1]
        blobs = _file_bytes(Path(path), Path(path + "-wal"))
        assert b"1000000001" in blobs  # the file is the right one
        for secret in SECRETS.values():
            assert secret.encode() not in blobs
    config = await store.bots.get_by_phone_number_id("1000000001")
    assert config is not None and config.app_secret == SECRETS["app_secret"]


async def test_reading_with_the_wrong_key_fails_clearly(store) -> None:
    await _add_bot(store.bots, "1000000002")
    other = make_engine(store.db.url)
    try:
        bots = BotRepository(session_factory(other), SecretBox(_key()))
        with pytest.raises(SecretDecryptionError, match="ONYX_WA_ENCRYPTION_KEY"):
            await bots.get_by_phone_number_id("1000000002")
        assert (await bots.list_bots("acme"))[0].phone_number_id == "1000000002"  # no secrets
    finally:
        await other.dispose()


async def test_reencrypt_all_moves_secrets_to_the_newest_key(store) -> None:
    await _add_bot(store.bots, "1000000003")
    new = _key()
    other = make_engine(store.db.url)
    try:
        rotating = BotRepository(session_factory(other), SecretBox(f"{new},{store.key}"))
        assert await rotating.reencrypt_all() == 1
    finally:
        await other.dispose()
    only_new = make_engine(store.db.url)
    try:
        bots = BotRepository(session_factory(only_new), SecretBox(new))
        config = await bots.get_by_phone_number_id("1000000003")
        assert config is not None and config.onyx_api_key == SECRETS["onyx_api_key"]
    finally:
        await only_new.dispose()
    with pytest.raises(SecretDecryptionError):
        await store.bots.get_by_phone_number_id("1000000003")  # old key alone no longer works


async def test_engine_without_a_box_refuses_to_write_secrets(db) -> None:
    from store.migrate import upgrade
    from store.models import WhatsAppBot

    upgrade(db.url)
    engine = make_engine(db.url)
    try:
        async with session_factory(engine)() as session:
            session.add(
                WhatsAppBot(
                    tenant_id="t",
                    name="n",
                    phone_number_id="1",
                    access_token="plain",
                    app_secret="plain",
                    verify_token="plain",
                )
            )
            with pytest.raises(Exception, match="no SecretBox attached"):
                await session.commit()
    finally:
        await engine.dispose()
    assert isinstance(WhatsAppBot.__table__.c.access_token.type, EncryptedString)


async def test_one_engine_cannot_have_two_boxes(store) -> None:
    with pytest.raises(ValueError, match="another SecretBox"):
        BotRepository(store.sessions, SecretBox(_key()))
