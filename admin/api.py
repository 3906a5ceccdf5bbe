"""The ``/api/v1`` endpoints: bots, chat configs, user links, secret rotation, audit log.

Why a route table: each :class:`Route` carries its handler, body and response models, so the
server (``admin.app``) and the OpenAPI document (``admin.openapi``) are built from one list and
cannot disagree. New areas (the analytics JSON API, the UI's needs) add routes to a table of
their own and pass it to ``create_app``.

Tenant isolation: every bot-scoped route loads the bot first and answers 404 when the caller's
tenant differs, with the same message as for a bot that does not exist, so a tenant admin cannot
learn whether another tenant's object exists.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, SecretStr, ValidationError

from admin import schemas as s
from admin.audit import PendingAudit, list_entries, pending_for
from admin.auth import Principal
from admin.errors import ApiError, bad_request, forbidden, not_found
from onyx_wa.logs import hash_id
from store.models import WhatsAppBot, WhatsAppChatConfig
from store.privacy import forget_user_rows
from store.repo import (
    SECRET_FIELDS,
    BotSummary,
    ChatConfigView,
    DuplicateError,
    NotFoundError,
    UserLink,
)

log = logging.getLogger("admin")

API = "/api/v1"
MAX_DB_ID = 2**31 - 1
MAX_BODY_DEPTH = 32  # the deepest real body (answer_filters) has a few levels
OPERATOR_ONLY_FIELDS = ("tenant_questions_per_minute", "tenant_questions_per_day")
_RequestKey: Any = getattr(web, "RequestKey", None)  # aiohttp >= 3.13; plain strings before
PRINCIPAL_KEY: Any = _RequestKey("admin_principal", Principal) if _RequestKey else "principal"
STATUS_KEY: Any = _RequestKey("admin_status", int) if _RequestKey else "status"


# --- the route table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A query parameter, for validation and the OpenAPI document."""

    name: str
    kind: type = str
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI style: /api/v1/bots/{bot_id}
    handler: Callable[[Call], Awaitable[Any]]
    operation_id: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    public: bool = False
    description: str = ""


@dataclass
class Call:
    """One request as a handler sees it: the caller, the validated body, path and query."""

    request: web.Request
    principal: Principal
    ctx: Any  # admin.app.AdminContext
    body: Any = None
    query: dict[str, Any] = field(default_factory=dict)

    def path_int(self, name: str) -> int:
        value = int(self.request.match_info[name])  # the route pattern admits digits only
        if value > MAX_DB_ID:
            raise not_found(_missing(name, value))
        return value

    def path_str(self, name: str) -> str:
        return self.request.match_info[name]


def _missing(name: str, value: Any) -> str:
    what = {"bot_id": "bot", "config_id": "chat config"}.get(name, name)
    return f"no {what} with id {value}"


# --- helpers ------------------------------------------------------------------------------------

UNSTORABLE_TEXT = "text must not contain NUL characters or unpaired surrogates"


def storable(text: str) -> bool:
    """Whether the database can hold ``text``: PostgreSQL refuses NUL in text and JSONB, and
    no driver can encode a lone surrogate (JSON can carry one as a ``\\udXXX`` escape)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def body_problem(data: Any) -> dict[str, Any] | None:
    """The first value of a parsed body that no column could store, as an error detail."""
    stack: list[tuple[Any, list[str | int]]] = [(data, [])]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_BODY_DEPTH:
            return {"loc": loc[:MAX_BODY_DEPTH], "msg": "nested too deeply", "type": "too_deep"}
        if isinstance(value, str) and not storable(value):
            return {"loc": loc, "msg": UNSTORABLE_TEXT, "type": "unstorable_text"}
        if isinstance(value, float) and not math.isfinite(value):
            return {"loc": loc, "msg": "numbers must be finite", "type": "not_finite"}
        if isinstance(value, dict):
            for key, item in value.items():
                if not storable(key):  # the key itself is not named: it may be anything
                    return {"loc": loc, "msg": UNSTORABLE_TEXT, "type": "unstorable_text"}
                stack.append((item, [*loc, key]))
        elif isinstance(value, list):
            stack += [(item, [*loc, i]) for i, item in enumerate(value)]
    return None


async def read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """Parse and validate a JSON object body; every problem is a 400 naming the field."""
    raw = await request.read()
    if not raw.strip():
        raise bad_request("a JSON object body is required")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise bad_request("malformed JSON body") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    problem = body_problem(data)
    if problem is not None:
        name = ".".join(str(p) for p in problem["loc"]) or "body"
        raise bad_request(f"invalid request body ({name})", details=[problem])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"loc": [str(p) if not isinstance(p, int) else p for p in e["loc"]], "msg": e["msg"],
             "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]  # fmt: skip
        names = ", ".join(sorted({".".join(str(p) for p in d["loc"]) or "body" for d in details}))
        raise bad_request(f"invalid request body ({names})", details=details) from None


def parse_query(request: web.Request, params: tuple[Param, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for param in params:
        raw = request.query.get(param.name)
        if raw is None or (raw == "" and param.kind is not int):  # "?limit=" is no integer
            values[param.name] = param.default
            continue
        if param.kind is int:
            try:
                number = int(raw)
            except ValueError:
                raise bad_request(f"query parameter {param.name} must be an integer") from None
            if param.minimum is not None and number < param.minimum:
                raise bad_request(f"query parameter {param.name} must be >= {param.minimum}")
            if param.maximum is not None and number > param.maximum:
                raise bad_request(f"query parameter {param.name} must be <= {param.maximum}")
            values[param.name] = number
        else:
            if len(raw) > 200:
                raise bad_request(f"query parameter {param.name} is too long")
            if not storable(raw):
                raise bad_request(f"query parameter {param.name}: {UNSTORABLE_TEXT}")
            values[param.name] = raw
    return values


def bot_out(bot: BotSummary) -> s.BotOut:
    data = {k: v for k, v in bot.to_dict().items() if k not in SECRET_FIELDS}
    data.update({f"has_{name}": getattr(bot, name) is not None for name in SECRET_FIELDS})
    return s.BotOut(**data)


def chat_out(view: ChatConfigView) -> s.ChatConfigOut:
    return s.ChatConfigOut(
        id=view.id or 0,
        bot_id=view.bot_id,
        match_kind=view.match_kind,
        match_value=view.match_value,
        persona_id=view.persona_id,
        document_sets=list(view.document_sets),
        respond_tag_only=view.respond_tag_only,
        allowed_senders=list(view.allowed_senders) if view.allowed_senders is not None else None,
        answer_filters=dict(view.answer_filters),
        follow_up_contacts=list(view.follow_up_contacts),
        show_sources=view.show_sources,
        is_default=view.is_default,
        disabled=view.disabled,
    )


def link_out(link: UserLink) -> s.UserLinkOut:
    return s.UserLinkOut(
        id=link.id,
        bot_id=link.bot_id,
        tenant_id=link.tenant_id,
        user_id=link.user_id,
        onyx_user_email=link.onyx_user_email,
        language=link.language,
        sources_on=link.sources_on,
        opted_out=link.opted_out,
        has_onyx_api_key=link.onyx_api_key is not None,
    )


def plain(value: Any) -> Any:
    """Unwrap SecretStr for the repository (the only place plaintext goes)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def changes_of(body: BaseModel) -> dict[str, Any]:
    return {name: plain(getattr(body, name)) for name in body.model_fields_set}


def logged(pending: PendingAudit) -> None:
    """The change, for the process log: names only, never values."""
    if pending.recorded:
        log.info(
            "admin change %s %s %s by %s (%s) tenant=%s fields=%s",
            pending.action,
            pending.object_type,
            pending.object_id,
            pending.actor,
            pending.role,
            pending.tenant_id,
            ",".join(sorted(set(pending.fields))) or "-",
        )


def check_operator_only(call: Call, names: set[str]) -> None:
    restricted = sorted(names & set(OPERATOR_ONLY_FIELDS))
    if restricted and not call.principal.is_operator:
        raise forbidden(f"only operators can set {', '.join(restricted)}")


async def visible_bot(call: Call) -> BotSummary:
    """The bot of the path, or 404 when it does not exist or belongs to another tenant."""
    bot_id = call.path_int("bot_id")
    bot = await call.ctx.bots().get_summary(bot_id)
    if bot is None or not call.principal.can_see(bot.tenant_id):
        raise not_found(_missing("bot_id", bot_id))
    return bot


async def visible_config(call: Call, bot: BotSummary) -> ChatConfigView:
    config_id = call.path_int("config_id")
    view = await call.ctx.chats().get(config_id)
    if view is None or view.bot_id != bot.id:
        raise not_found(_missing("config_id", config_id))
    return view


@contextmanager
def repository_errors(missing: str) -> Iterator[None]:
    """DuplicateError → 409, NotFoundError → 404 (``missing``), other ValueError → 400.

    The repositories' messages name the rule and, at most, non-secret values (ids, URLs).
    """
    try:
        yield
    except DuplicateError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except NotFoundError:
        raise not_found(missing) from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def user_id_of(call: Call) -> str:
    user_id = call.path_str("user_id")
    if not 1 <= len(user_id) <= 128 or not storable(user_id):
        raise bad_request("user_id must be a wa_id or BSUID of 1-128 characters")
    return user_id


def user_object_id(bot_id: int, user_id: str) -> str:
    """Audit rows name users by a hash: the audit log outlives a forgotten user's data."""
    return f"{bot_id}/{hash_id(user_id)}"


# --- bots ---------------------------------------------------------------------------------------


async def whoami(call: Call) -> s.WhoAmI:
    return s.WhoAmI(**call.principal.to_dict())


async def list_bots(call: Call) -> s.BotList:
    tenant = call.query["tenant_id"]
    if not call.principal.is_operator:
        if tenant is not None and tenant != call.principal.tenant_id:
            return s.BotList(items=[])
        tenant = call.principal.tenant_id
    bots = await call.ctx.bots().list_bots(tenant)
    return s.BotList(items=[bot_out(b) for b in bots])


async def create_bot(call: Call) -> s.BotOut:
    body: s.BotCreate = call.body
    principal = call.principal
    if principal.is_operator:
        if body.tenant_id is None:
            raise bad_request("tenant_id is required (operator tokens serve every tenant)")
        tenant = body.tenant_id
    else:
        tenant = body.tenant_id or principal.tenant_id
        if tenant != principal.tenant_id:
            raise forbidden("tenant admins can only add bots to their own tenant")
    check_operator_only(call, set(body.model_fields_set))
    values = changes_of(body)
    values["tenant_id"] = tenant
    for name in ("access_token", "app_secret", "verify_token", "phone_number_id"):
        values[name] = plain(getattr(body, name))
    pending = pending_for(
        principal,
        tenant_id=tenant,
        action="bot.create",
        object_type="bot",
        fields=sorted(values),
        id_of=WhatsAppBot,
    )
    with repository_errors("the bot disappeared"):
        bot = await call.ctx.bots(pending).add_bot(**values)
    logged(pending)
    return bot_out(bot)


async def get_bot(call: Call) -> s.BotOut:
    return bot_out(await visible_bot(call))


async def _update_bot(call: Call, action: str, changes: dict[str, Any]) -> s.BotOut:
    bot = await visible_bot(call)
    if not changes:
        return bot_out(bot)
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action=action,
        object_type="bot",
        object_id=str(bot.id),
        fields=list(changes),
    )
    with repository_errors(_missing("bot_id", bot.id)):
        await call.ctx.bots(pending).update_bot(bot.phone_number_id, **changes)
    logged(pending)
    updated = await call.ctx.bots().get_summary(bot.id)
    if updated is None:
        raise not_found(_missing("bot_id", bot.id))
    return bot_out(updated)


async def patch_bot(call: Call) -> s.BotOut:
    body: s.BotPatch = call.body
    check_operator_only(call, set(body.model_fields_set))
    return await _update_bot(call, "bot.update", changes_of(body))


async def enable_bot(call: Call) -> s.BotOut:
    return await _update_bot(call, "bot.enable", {"enabled": True})


async def disable_bot(call: Call) -> s.BotOut:
    return await _update_bot(call, "bot.disable", {"enabled": False})


async def rotate_secret(call: Call) -> None:
    name = call.path_str("secret")
    if name not in SECRET_FIELDS:
        raise bad_request(f"unknown secret {name!r}: use one of {', '.join(SECRET_FIELDS)}")
    bot = await visible_bot(call)
    body: s.SecretRotation = call.body
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action="bot.rotate_secret",
        object_type="bot",
        object_id=str(bot.id),
        fields=[name],
    )
    with repository_errors(_missing("bot_id", bot.id)):
        await call.ctx.bots(pending).rotate_secret(bot.phone_number_id, name, plain(body.value))
    logged(pending)


async def delete_bot(call: Call) -> None:
    bot = await visible_bot(call)
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action="bot.delete",
        object_type="bot",
        object_id=str(bot.id),
    )
    if not await call.ctx.bots(pending).delete_bot(bot.phone_number_id):
        raise not_found(_missing("bot_id", bot.id))
    logged(pending)


# --- chat configs -------------------------------------------------------------------------------


async def list_chat_configs(call: Call) -> s.ChatConfigList:
    bot = await visible_bot(call)
    return s.ChatConfigList(
        items=[chat_out(v) for v in await call.ctx.chats().list_for_bot(bot.id)]
    )


async def create_chat_config(call: Call) -> s.ChatConfigOut:
    bot = await visible_bot(call)
    body: s.ChatConfigCreate = call.body
    values = changes_of(body)
    values["match_kind"] = body.match_kind
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action="chat_config.create",
        object_type="chat_config",
        fields=sorted(values),
        id_of=WhatsAppChatConfig,
    )
    with repository_errors(_missing("bot_id", bot.id)):
        view = await call.ctx.chats(pending).add(bot.id, **values)
    logged(pending)
    return chat_out(view)


async def get_chat_config(call: Call) -> s.ChatConfigOut:
    bot = await visible_bot(call)
    return chat_out(await visible_config(call, bot))


async def patch_chat_config(call: Call) -> s.ChatConfigOut:
    bot = await visible_bot(call)
    view = await visible_config(call, bot)
    body: s.ChatConfigPatch = call.body
    changes = changes_of(body)
    if not changes:
        return chat_out(view)
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action="chat_config.update",
        object_type="chat_config",
        object_id=str(view.id),
        fields=list(changes),
    )
    with repository_errors(_missing("config_id", view.id)):
        updated = await call.ctx.chats(pending).update(view.id, **changes)
    logged(pending)
    return chat_out(updated)


async def delete_chat_config(call: Call) -> None:
    bot = await visible_bot(call)
    view = await visible_config(call, bot)
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action="chat_config.delete",
        object_type="chat_config",
        object_id=str(view.id),
    )
    if not await call.ctx.chats(pending).delete(view.id):
        raise not_found(_missing("config_id", view.id))
    logged(pending)


# --- user links ---------------------------------------------------------------------------------


async def list_user_links(call: Call) -> s.UserLinkList:
    bot = await visible_bot(call)
    limit = call.query["limit"]
    links = await call.ctx.users().list_for_bot(bot.id, after=call.query["after"], limit=limit)
    after = links[-1].user_id if len(links) == limit else None
    return s.UserLinkList(items=[link_out(link) for link in links], next_after=after)


async def get_user_link(call: Call) -> s.UserLinkOut:
    bot = await visible_bot(call)
    user_id = user_id_of(call)
    link = await call.ctx.users().get(bot.id, user_id)
    if link is None:
        raise not_found(f"no link for user {user_id} on bot {bot.id}")
    return link_out(link)


async def put_user_link(call: Call) -> s.UserLinkOut:
    bot = await visible_bot(call)
    user_id = user_id_of(call)
    body: s.UserLinkPut = call.body
    changes = changes_of(body)
    existed = await call.ctx.users().get(bot.id, user_id) is not None
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action="user_link.update" if existed else "user_link.create",
        object_type="user_link",
        object_id=user_object_id(bot.id, user_id),
        fields=list(changes),
    )
    with repository_errors(_missing("bot_id", bot.id)):
        link = await call.ctx.users(pending).upsert(bot.id, user_id, **changes)
    logged(pending)
    if not existed:
        call.request[STATUS_KEY] = 201
    return link_out(link)


async def delete_user_link(call: Call) -> None:
    bot = await visible_bot(call)
    user_id = user_id_of(call)
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action="user_link.delete",
        object_type="user_link",
        object_id=user_object_id(bot.id, user_id),
    )
    if not await call.ctx.users(pending).delete_user(bot.id, user_id):
        raise not_found(f"no link for user {user_id} on bot {bot.id}")
    logged(pending)


async def delete_user_data(call: Call) -> s.UserDataDeleted:
    """Forget a user of the bot's tenant: Kafka state first (a forget request), then rows.

    The request is published before anything is deleted: if the broker is down the call fails
    with 503 and nothing changed, so a retry does everything; the database deletion and its
    audit row are one transaction. Idempotent: a repeat deletes nothing more and answers 202.
    """
    from streams.conversation import forget_request

    bot = await visible_bot(call)
    user_id = user_id_of(call)
    publish = call.ctx.forget_publisher
    if publish is None:
        raise ApiError(503, "unavailable", "no Kafka producer configured for forget requests")
    request = forget_request(bot.tenant_id, user_id, source="admin")
    try:
        await publish(f"{bot.tenant_id}:{user_id}", request)
    except Exception as exc:  # noqa: BLE001 - any broker failure: nothing deleted, retry
        log.warning("forget request not published: %s", type(exc).__name__)
        raise ApiError(
            503, "unavailable", "the Kafka broker did not accept the forget request; retry"
        ) from None
    pending = pending_for(
        call.principal,
        tenant_id=bot.tenant_id,
        action="user.forget",
        object_type="user",
        object_id=user_object_id(bot.id, user_id),
    )
    report = await forget_user_rows(
        call.ctx.sessions,
        bot.tenant_id,
        user_id,
        settings=getattr(call.ctx, "settings", None),
        audit=pending.values(),
    )
    pending.recorded = True
    logged(pending)
    call.request[STATUS_KEY] = 202
    return s.UserDataDeleted(
        tenant_id=bot.tenant_id,
        user_id=user_id,
        conversation="tombstone_requested",
        forget_id=request["forget_id"],
        **report.as_dict(),
    )


# --- audit --------------------------------------------------------------------------------------


async def list_audit(call: Call) -> s.AuditList:
    tenant = call.query["tenant_id"]
    if not call.principal.is_operator:
        if tenant is not None and tenant != call.principal.tenant_id:
            return s.AuditList(items=[], next_before=None)
        tenant = call.principal.tenant_id
    items, next_before = await list_entries(
        call.ctx.sessions,
        tenant_id=tenant,
        action=call.query["action"],
        object_type=call.query["object_type"],
        before=call.query["before"],
        limit=call.query["limit"],
    )
    return s.AuditList(items=[s.AuditEntryOut(**i) for i in items], next_before=next_before)


# --- the table ----------------------------------------------------------------------------------

BOT = f"{API}/bots/{{bot_id}}"
CONFIG = f"{BOT}/chat-configs/{{config_id}}"
USER = f"{BOT}/users/{{user_id}}"
TENANT_FILTER = Param("tenant_id", description="Only this tenant (tenant admins: always theirs).")
LIMIT = Param("limit", int, "Page size.", minimum=1, maximum=500, default=100)

# Path parameter patterns for the router (the OpenAPI document says the same in its schemas).
PATH_PATTERNS = {
    "bot_id": r"[0-9]{1,18}",
    "config_id": r"[0-9]{1,18}",
    "secret": r"[a-z_]{1,32}",
    "user_id": r"[^/]{1,512}",
    "tenant_id": r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
}

ROUTES: tuple[Route, ...] = (
    Route("GET", f"{API}/whoami", whoami, "whoami", "The caller's role and tenant", "auth",
          response=s.WhoAmI),
    Route("GET", f"{API}/bots", list_bots, "listBots", "List bots", "bots",
          response=s.BotList, query=(TENANT_FILTER,)),
    Route("POST", f"{API}/bots", create_bot, "createBot", "Add a bot", "bots",
          body=s.BotCreate, response=s.BotOut, status=201, errors=(400, 403, 409)),
    Route("GET", BOT, get_bot, "getBot", "Get a bot", "bots", response=s.BotOut, errors=(404,)),
    Route("PATCH", BOT, patch_bot, "updateBot", "Change fields of a bot", "bots",
          body=s.BotPatch, response=s.BotOut, errors=(400, 403, 404)),
    Route("DELETE", BOT, delete_bot, "deleteBot",
          "Delete a bot with its chat configs and user links", "bots", status=204,
          errors=(404,)),
    Route("POST", f"{BOT}/enable", enable_bot, "enableBot", "Enable a bot", "bots",
          response=s.BotOut, errors=(404,)),
    Route("POST", f"{BOT}/disable", disable_bot, "disableBot",
          "Disable a bot (its webhooks are refused, nothing is sent)", "bots",
          response=s.BotOut, errors=(404,)),
    Route("PUT", f"{BOT}/secrets/{{secret}}", rotate_secret, "rotateSecret",
          "Replace one secret (write-only)", "bots", body=s.SecretRotation, status=204,
          errors=(400, 404)),
    Route("GET", f"{BOT}/chat-configs", list_chat_configs, "listChatConfigs",
          "List a bot's chat configs", "chat-configs", response=s.ChatConfigList,
          errors=(404,)),
    Route("POST", f"{BOT}/chat-configs", create_chat_config, "createChatConfig",
          "Add a chat config", "chat-configs", body=s.ChatConfigCreate,
          response=s.ChatConfigOut, status=201, errors=(400, 404, 409)),
    Route("GET", CONFIG, get_chat_config, "getChatConfig", "Get a chat config",
          "chat-configs", response=s.ChatConfigOut, errors=(404,)),
    Route("PATCH", CONFIG, patch_chat_config, "updateChatConfig",
          "Change fields of a chat config", "chat-configs", body=s.ChatConfigPatch,
          response=s.ChatConfigOut, errors=(400, 404)),
    Route("DELETE", CONFIG, delete_chat_config, "deleteChatConfig", "Delete a chat config",
          "chat-configs", status=204, errors=(404,)),
    Route("GET", f"{BOT}/users", list_user_links, "listUserLinks", "List a bot's user links",
          "user-links", response=s.UserLinkList, errors=(404,),
          query=(Param("after", description="Last user_id of the previous page."), LIMIT)),
    Route("GET", USER, get_user_link, "getUserLink", "Get a user link", "user-links",
          response=s.UserLinkOut, errors=(400, 404)),
    Route("PUT", USER, put_user_link, "putUserLink",
          "Create or change a user link (absent fields keep their value)", "user-links",
          body=s.UserLinkPut, response=s.UserLinkOut, errors=(400, 404),
          description="Answers 201 when the link was created, 200 when it was changed."),
    Route("DELETE", USER, delete_user_link, "deleteUserLink",
          "Delete a user link (the user's link and preferences)", "user-links", status=204,
          errors=(400, 404)),
    Route("DELETE", f"{USER}/data", delete_user_data, "deleteUserData",
          "Forget a user: conversation state, user links and analytics rows", "user-links",
          response=s.UserDataDeleted, status=202, errors=(400, 404, 503),
          description="Publishes a forget request (the conversation worker tombstones the "
          "chat's state) and deletes the user's links on every bot of the tenant and their "
          "analytics facts; see docs/privacy.md. 503 when the broker is unavailable (nothing "
          "is deleted then)."),
    Route("GET", f"{API}/audit", list_audit, "listAudit", "The audit log, newest first",
          "audit", response=s.AuditList,
          query=(TENANT_FILTER, Param("action", description="e.g. bot.update"),
                 Param("object_type", description="bot, chat_config or user_link"),
                 Param("before", int, "Only entries with a smaller id (paging).", minimum=1,
                       maximum=MAX_DB_ID),
                 LIMIT)),
)  # fmt: skip
