"""Encryption of secrets at rest (access tokens, app secrets, verify tokens, Onyx API keys).

Why Fernet: authenticated encryption (AES-CBC + HMAC) with a timestamped token format, so a
wrong key is detected instead of yielding garbage, and MultiFernet gives key rotation for free:
decrypt with any configured key, encrypt with the newest. Why a ``TypeDecorator``: encryption
happens at the one place values cross into SQL, so no code path can write plaintext by mistake.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeDecorator

from onyx_wa.settings import Settings, SettingsError

KEY_ENV = "ONYX_WA_ENCRYPTION_KEY"
GENERATE_HINT = (
    'generate one with: python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"'
)
KEY_FILE_NAME = "secret.key"


class SecretDecryptionError(RuntimeError):
    """A stored secret cannot be decrypted with any configured key (wrong or missing key)."""


class SecretBox:
    """Encrypts and decrypts short secrets with one or more Fernet keys (newest first)."""

    def __init__(self, keys: str | list[str]) -> None:
        raw = keys.split(",") if isinstance(keys, str) else list(keys)
        cleaned = [k.strip() for k in raw if k.strip()]
        if not cleaned:
            raise SettingsError(f"{KEY_ENV} is empty: {GENERATE_HINT}")
        fernets = []
        for position, key in enumerate(cleaned, start=1):
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                raise SettingsError(
                    f"{KEY_ENV}: key #{position} is not a valid Fernet key "
                    f"(32 url-safe base64-encoded bytes); {GENERATE_HINT}"
                ) from None
        self._primary = fernets[0]
        self._multi = MultiFernet(fernets)
        self.key_count = len(fernets)

    def encrypt(self, plaintext: str) -> str:
        """Encrypt with the newest key; the token is ASCII, safe for any text column."""
        return self._multi.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """Decrypt with whichever configured key matches, or fail loudly (never garbage)."""
        try:
            return self._multi.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretDecryptionError(
                f"cannot decrypt a stored secret: {KEY_ENV} does not contain the key it was "
                "encrypted with (when rotating keys, keep the old key after the new one)"
            ) from None

    def rotate(self, token: str) -> str:
        """Re-encrypt a token under the newest key (the plaintext never leaves this method)."""
        try:
            return self._multi.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise SecretDecryptionError(
                f"cannot rotate a stored secret: none of the keys in {KEY_ENV} decrypts it"
            ) from None

    def is_current(self, token: str) -> bool:
        """True when the token is already encrypted with the newest key."""
        try:
            self._primary.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeError):
            return False
        return True

    def __repr__(self) -> str:  # never show key material
        return f"SecretBox(keys={self.key_count})"


# --- the link between engines and keys ---------------------------------------------------------
# A TypeDecorator only sees the dialect when it converts values. Each engine owns its own dialect
# instance, so keying the box on it gives per-engine keys (tests run several) without globals
# that one component could overwrite for another.
_BOXES: weakref.WeakKeyDictionary[Dialect, SecretBox] = weakref.WeakKeyDictionary()


def attach_secret_box(engine: AsyncEngine, box: SecretBox) -> None:
    """Make ``EncryptedString`` columns on this engine use ``box``."""
    dialect = engine.sync_engine.dialect
    existing = _BOXES.get(dialect)
    if existing is not None and existing is not box:
        raise ValueError("this engine already uses another SecretBox; use one box per engine")
    _BOXES[dialect] = box


def _box_for(dialect: Dialect) -> SecretBox:
    box = _BOXES.get(dialect)
    if box is None:
        raise RuntimeError(
            "no SecretBox attached to this engine: create repositories with a SecretBox "
            "(store.crypto.attach_secret_box) before touching encrypted columns"
        )
    return box


class EncryptedString(TypeDecorator[str]):
    """A string column stored as a Fernet token: encrypted on write, decrypted on read."""

    impl = String
    cache_ok = True

    def __init__(self, length: int = 1024, **kwargs: Any) -> None:
        super().__init__(length, **kwargs)

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return _box_for(dialect).encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return _box_for(dialect).decrypt(value)


# --- key resolution ----------------------------------------------------------------------------


def resolve_encryption_key(settings: Settings) -> str:
    """The configured key(s); for the embedded default, a key generated once and kept on disk.

    Outside the embedded default a generated key would be lost with the container and make every
    stored secret unreadable, so it must be configured explicitly.
    """
    if settings.encryption_key and settings.encryption_key.strip():
        SecretBox(settings.encryption_key)  # validate now: one clear error at start
        return settings.encryption_key.strip()
    if settings.embedded and settings.database_url is None:
        return _load_or_create_key_file(Path(settings.data_dir) / KEY_FILE_NAME)
    raise SettingsError(
        f"{KEY_ENV} is not set (required with an external database or broker): {GENERATE_HINT}"
    )


def _load_or_create_key_file(path: Path) -> str:
    """Read the key file, or create it atomically with mode 0600 (first writer wins)."""
    if path.exists():
        return _read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # atomic and fails if another process got there first
        except FileExistsError:
            pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return _read_key_file(path)


def _read_key_file(path: Path) -> str:
    key = path.read_text(encoding="ascii").strip()
    try:
        SecretBox(key)
    except SettingsError:
        raise SettingsError(
            f"{path} does not hold a valid Fernet key: restore it, or set {KEY_ENV}"
        ) from None
    return key
