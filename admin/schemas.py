"""Request and response bodies of the admin API, as pydantic models.

Why pydantic: the same models validate requests (unknown fields rejected, lengths matching the
database columns) and generate the OpenAPI schemas, so the document cannot drift from the code.
Secrets are ``SecretStr`` (``writeOnly`` in the schema, masked in any ``repr``) and response
models have no secret fields at all, only ``has_<secret>`` flags.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from store.repo import SECRET_MAX_CHARS

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Short = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Tenant = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
PhoneNumberId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,32}$")]
ChatId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Quota = Annotated[int, Field(ge=1, le=100_000_000)]
Throughput = Annotated[float, Field(gt=0, le=1000)]
PersonaId = Annotated[int, Field(ge=0, le=2**31 - 1)]  # an INTEGER column


def _utc(value: datetime) -> datetime:
    """SQLite returns naive timestamps (stored in UTC): say so in every response."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def _secret(name: str) -> Any:
    return Annotated[SecretStr, Field(min_length=1, max_length=SECRET_MAX_CHARS[name])]


AccessToken = _secret("access_token")
AppSecret = _secret("app_secret")
VerifyToken = _secret("verify_token")
OnyxApiKey = _secret("onyx_api_key")
SecretName = Literal["access_token", "app_secret", "verify_token", "onyx_api_key"]


def _nullable(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(
        option.get("type") == "null" for option in schema.get("anyOf", ())
    )


def _drop_null_defaults(schema: dict[str, Any]) -> None:
    """PATCH fields default to None meaning "absent = unchanged", not "null is allowed"."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None and not _nullable(prop):
            del prop["default"]


class Strict(BaseModel):
    """Request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(
        extra="forbid", hide_input_in_errors=True, json_schema_extra=_drop_null_defaults
    )


# --- bots ----------------------------------------------------------------------------------------


class BotCreate(Strict):
    """A new bot (one WhatsApp business number). Tenant admins may omit ``tenant_id``."""

    tenant_id: Tenant | None = None
    phone_number_id: PhoneNumberId = Field(description="Meta's numeric id of the number.")
    name: Name | None = None
    waba_id: Short | None = None
    display_phone_number: Short | None = None
    access_token: AccessToken
    app_secret: AppSecret
    verify_token: VerifyToken
    answer_backend: Literal["local", "onyx"] = "local"
    onyx_base_url: Url | None = None
    onyx_api_key: OnyxApiKey | None = None
    default_persona_id: PersonaId | None = None
    throughput_per_s: Throughput = 80.0
    user_questions_per_minute: Quota | None = None
    tenant_questions_per_minute: Quota | None = Field(default=None, description="Operators only.")
    tenant_questions_per_day: Quota | None = Field(default=None, description="Operators only.")
    enabled: bool = True


class BotPatch(Strict):
    """Fields to change; absent fields keep their value, ``null`` clears an optional one."""

    name: Name = None  # type: ignore[assignment]  # absent = unchanged; null is rejected
    enabled: bool = None  # type: ignore[assignment]
    waba_id: Short | None = None
    display_phone_number: Short | None = None
    access_token: AccessToken = None  # type: ignore[valid-type]
    app_secret: AppSecret = None  # type: ignore[valid-type]
    verify_token: VerifyToken = None  # type: ignore[valid-type]
    answer_backend: Literal["local", "onyx"] = None  # type: ignore[assignment]
    onyx_base_url: Url | None = None
    onyx_api_key: OnyxApiKey | None = None  # type: ignore[valid-type]
    default_persona_id: PersonaId | None = None
    throughput_per_s: Throughput = None  # type: ignore[assignment]
    user_questions_per_minute: Quota | None = None
    tenant_questions_per_minute: Quota | None = Field(default=None, description="Operators only.")
    tenant_questions_per_day: Quota | None = Field(default=None, description="Operators only.")


class SecretRotation(Strict):
    """The new value of one secret (write-only: it is never returned)."""

    value: SecretStr = Field(min_length=1, max_length=max(SECRET_MAX_CHARS.values()))


class BotOut(BaseModel):
    """A bot as the API shows it: no secret values, only whether each one is set."""

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
    has_access_token: bool
    has_app_secret: bool
    has_verify_token: bool
    has_onyx_api_key: bool
    created_at: UtcDatetime | None
    updated_at: UtcDatetime | None


class BotList(BaseModel):
    items: list[BotOut]


# --- chat configs -------------------------------------------------------------------------------


class ChatConfigCreate(Strict):
    """A per-chat rule: an exact wa_id / group match, or the bot's default (at most one)."""

    match_kind: Literal["wa_id", "group", "default"]
    match_value: ChatId | None = Field(
        default=None, description="The wa_id, BSUID or group id; absent for the default."
    )
    persona_id: PersonaId | None = None
    document_sets: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=100
    )
    respond_tag_only: bool = False
    allowed_senders: list[ChatId] | None = Field(default=None, max_length=1000)
    answer_filters: dict[str, Any] = Field(default_factory=dict)
    follow_up_contacts: list[ChatId] = Field(default_factory=list, max_length=50)
    show_sources: bool = True
    disabled: bool = False


class ChatConfigPatch(Strict):
    """Fields to change; the match (kind and value) of a config is fixed once created."""

    persona_id: PersonaId | None = None
    document_sets: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default=None, max_length=100
    )  # type: ignore[assignment]
    respond_tag_only: bool = None  # type: ignore[assignment]
    allowed_senders: list[ChatId] | None = Field(default=None, max_length=1000)
    answer_filters: dict[str, Any] = None  # type: ignore[assignment]
    follow_up_contacts: list[ChatId] = Field(default=None, max_length=50)  # type: ignore[assignment]
    show_sources: bool = None  # type: ignore[assignment]
    disabled: bool = None  # type: ignore[assignment]


class ChatConfigOut(BaseModel):
    id: int
    bot_id: int
    match_kind: str
    match_value: str | None
    persona_id: int | None
    document_sets: list[str]
    respond_tag_only: bool
    allowed_senders: list[str] | None
    answer_filters: dict[str, Any]
    follow_up_contacts: list[str]
    show_sources: bool
    is_default: bool
    disabled: bool


class ChatConfigList(BaseModel):
    items: list[ChatConfigOut]


# --- user links ---------------------------------------------------------------------------------


class UserLinkPut(Strict):
    """Create or change a user link; absent fields keep their value (the key is write-only)."""

    onyx_user_email: Annotated[str, StringConstraints(max_length=320)] | None = None
    language: Annotated[str, StringConstraints(min_length=1, max_length=16)] | None = None
    sources_on: bool = None  # type: ignore[assignment]
    opted_out: bool = None  # type: ignore[assignment]
    onyx_api_key: OnyxApiKey | None = Field(  # type: ignore[valid-type]
        default=None, description="The user's own Onyx API key; null removes it."
    )


class UserLinkOut(BaseModel):
    id: int
    bot_id: int
    tenant_id: str
    user_id: str
    onyx_user_email: str | None
    language: str | None
    sources_on: bool
    opted_out: bool
    has_onyx_api_key: bool


class UserDataDeleted(BaseModel):
    """What ``DELETE .../users/{user_id}/data`` removed (database) and requested (Kafka state)."""

    tenant_id: str
    user_id: str
    user_links: int = Field(description="User links deleted (on every bot of the tenant).")
    question_facts: int = Field(description="Analytics question rows deleted.")
    feedback_facts: int = Field(description="Analytics feedback rows deleted.")
    conversation: str = Field(
        description="'tombstone_requested': a forget request was published; the conversation "
        "worker owning the chat deletes its state (and tombstones the changelog) within seconds."
    )
    forget_id: str = Field(description="Id of the published ForgetRequest (wa.forget).")


class UserLinkList(BaseModel):
    items: list[UserLinkOut]
    next_after: str | None = Field(description="Pass as ?after= for the next page.")


# --- audit, health, errors ----------------------------------------------------------------------


class AuditEntryOut(BaseModel):
    id: int
    at: UtcDatetime
    actor: str
    role: str
    tenant_id: str | None
    action: str
    object_type: str
    object_id: str | None
    changes: dict[str, Any]


class AuditList(BaseModel):
    items: list[AuditEntryOut]
    next_before: int | None = Field(description="Pass as ?before= for the next (older) page.")


class WhoAmI(BaseModel):
    role: Literal["operator", "tenant"]
    name: str
    tenant_id: str | None


class Health(BaseModel):
    status: Literal["alive"]


class Ready(BaseModel):
    database: bool
    schema_current: bool


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] | None = None


class Error(BaseModel):
    error: ErrorBody
