"""The admin API over a real socket: authorization matrix, write-only secrets, audit log,
validation, secret rotation, cache invalidation reaching running lookups, OpenAPI, the CLI.

Runs on SQLite and, when one answers, on PostgreSQL (``each_store``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from sqlalchemy import select

from admin.api import ROUTES
from admin.app import AdminContext, create_app
from admin.auth import TokenAuth, fingerprint, parse_tokens
from onyx_wa.broker import free_port
from onyx_wa.settings import SettingsError
from store.models import AuditLogEntry
from store.repo import config_version

RUN = uuid.uuid4().hex[:8]
OP_TOKEN = f"op-{RUN}-token-aaaaaaaaaaaaaaaa"
A_TOKEN = f"acme-{RUN}-token-bbbbbbbbbbbbbb"
B_TOKEN = f"globex-{RUN}-token-cccccccccccc"
UNNAMED_TOKEN = f"acme2-{RUN}-token-dddddddddddd"
BAD_TOKEN = f"nope-{RUN}-token-eeeeeeeeeeeeeeee"
TOKENS = (
    f"{OP_TOKEN}=operator@alice,{A_TOKEN}=tenant:acme@bob,"
    f"{B_TOKEN}=tenant:globex@carol,{UNNAMED_TOKEN}=tenant:acme"
)
ALL_TOKENS = (OP_TOKEN, A_TOKEN, B_TOKEN, UNNAMED_TOKEN, BAD_TOKEN)


# --- a client that remembers every body it saw -------------------------------------------------


@dataclass
class Reply:
    status: int
    text: str
    headers: Any

    @property
    def json(self) -> Any:
        return json.loads(self.text) if self.text else None


@dataclass
class Api:
    base: str
    http: aiohttp.ClientSession
    seen: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    counter: int = 0

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = OP_TOKEN,
        body: Any = None,
        raw: bytes | None = None,
        header: str | None = None,
    ) -> Reply:
        headers = {}
        if header is not None:
            headers["Authorization"] = header
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.http.request(method, self.base + path, data=data, headers=headers) as r:
            text = await r.text()
        self.seen.append(f"{r.status} {dict(r.headers)} {text}")
        return Reply(r.status, text, r.headers)

    def secret(self, name: str) -> str:
        value = f"{name}-SECRET-{uuid.uuid4().hex}"
        self.secrets.add(value)
        return value

    def pnid(self) -> str:
        self.counter += 1
        return f"{int(RUN, 16) % 10**8}{self.counter:05d}"

    def bot_body(self, tenant: str | None = "acme", **extra: Any) -> dict[str, Any]:
        body = {
            "phone_number_id": self.pnid(),
            "access_token": self.secret("access"),
            "app_secret": self.secret("app"),
            "verify_token": self.secret("verify"),
            **extra,
        }
        if tenant is not None:
            body["tenant_id"] = tenant
        return body

    async def add_bot(self, tenant: str = "acme", **extra: Any) -> dict[str, Any]:
        reply = await self.call("POST", "/api/v1/bots", OP_TOKEN, self.bot_body(tenant, **extra))
        assert reply.status == 201, reply.text
        return reply.json

    async def seed(self, tenant: str = "acme") -> dict[str, Any]:
        """A bot with a default chat config, a wa_id chat config and a user link."""
        bot = await self.add_bot(tenant)
        bid = bot["id"]
        default = await self.call(
            "POST", f"/api/v1/bots/{bid}/chat-configs", body={"match_kind": "default"}
        )
        exact = await self.call(
            "POST",
            f"/api/v1/bots/{bid}/chat-configs",
            body={"match_kind": "wa_id", "match_value": "4915100000001", "persona_id": 2},
        )
        user = f"49151{self.counter:07d}"
        link = await self.call(
            "PUT",
            f"/api/v1/bots/{bid}/users/{user}",
            body={"onyx_user_email": "u@example.com", "onyx_api_key": self.secret("userkey")},
        )
        assert default.status == exact.status == link.status == 201
        return {"bot": bid, "config": exact.json["id"], "default": default.json["id"], "user": user}

    def assert_no_secrets(self) -> None:
        everything = "\n".join(self.seen)
        assert self.seen
        for secret in self.secrets:
            assert secret not in everything, "a secret value appeared in a response"
        for token in ALL_TOKENS:
            assert token not in everything, "a token appeared in a response"


@pytest.fixture
async def api(each_store) -> AsyncIterator[Api]:
    published: list[tuple[str, dict[str, Any]]] = []

    async def publish(key: str, record: dict[str, Any]) -> None:
        published.append((key, record))

    context = AdminContext(
        sessions=each_store.sessions,
        box=each_store.box,
        auth=TokenAuth.from_setting(TOKENS),
        forget_publisher=publish,
    )
    runner = web.AppRunner(create_app(context), access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    async with aiohttp.ClientSession() as http:
        client = Api(base=f"http://127.0.0.1:{port}", http=http)
        client.store = each_store  # type: ignore[attr-defined]
        try:
            yield client
        finally:
            await runner.cleanup()


async def audit_rows(store) -> list[AuditLogEntry]:
    async with store.sessions() as session:
        return list((await session.scalars(select(AuditLogEntry).order_by(AuditLogEntry.id))).all())


# --- authorization ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    operation: str
    method: str
    path: str  # with {bot} {config} {user} placeholders
    ok: int
    body: Any = None  # a dict, or a callable(api) -> dict
    scoped: bool = True  # a bot-scoped route: other tenants get 404


CASES = (
    Case("whoami", "GET", "/api/v1/whoami", 200, scoped=False),
    Case("listBots", "GET", "/api/v1/bots", 200, scoped=False),
    Case("createBot", "POST", "/api/v1/bots", 201, lambda api: api.bot_body("acme"), False),
    Case("getBot", "GET", "/api/v1/bots/{bot}", 200),
    Case("updateBot", "PATCH", "/api/v1/bots/{bot}", 200, {"name": "Renamed"}),
    Case("deleteBot", "DELETE", "/api/v1/bots/{bot}", 204),
    Case("enableBot", "POST", "/api/v1/bots/{bot}/enable", 200),
    Case("disableBot", "POST", "/api/v1/bots/{bot}/disable", 200),
    Case("rotateSecret", "PUT", "/api/v1/bots/{bot}/secrets/app_secret", 204,
         lambda api: {"value": api.secret("rotated")}),
    Case("listChatConfigs", "GET", "/api/v1/bots/{bot}/chat-configs", 200),
    Case("createChatConfig", "POST", "/api/v1/bots/{bot}/chat-configs", 201,
         {"match_kind": "group", "match_value": "120363000000000001"}),
    Case("getChatConfig", "GET", "/api/v1/bots/{bot}/chat-configs/{config}", 200),
    Case("updateChatConfig", "PATCH", "/api/v1/bots/{bot}/chat-configs/{config}", 200,
         {"show_sources": False}),
    Case("deleteChatConfig", "DELETE", "/api/v1/bots/{bot}/chat-configs/{config}", 204),
    Case("listUserLinks", "GET", "/api/v1/bots/{bot}/users", 200),
    Case("getUserLink", "GET", "/api/v1/bots/{bot}/users/{user}", 200),
    Case("putUserLink", "PUT", "/api/v1/bots/{bot}/users/{user}", 200, {"language": "de"}),
    Case("deleteUserLink", "DELETE", "/api/v1/bots/{bot}/users/{user}", 204),
    Case("deleteUserData", "DELETE", "/api/v1/bots/{bot}/users/{user}/data", 202),
    Case("listAudit", "GET", "/api/v1/audit", 200, scoped=False),
)  # fmt: skip


def test_the_matrix_covers_every_route() -> None:
    assert {c.operation for c in CASES} == {r.operation_id for r in ROUTES}


async def test_authorization_matrix(api: Api) -> None:
    """Every route × operator, tenant admin A, tenant admin B, no token, a bad token."""
    problems: list[str] = []
    for case in CASES:
        for caller in ("none", "bad", "malformed", "operator", "tenant-a", "tenant-b"):
            ids = await api.seed("acme")  # fresh objects: successful deletes do not leak over
            path = case.path.format(**ids)
            body = case.body(api) if callable(case.body) else case.body
            if caller == "none":
                reply = await api.call(case.method, path, None, body)
                want, challenge = 401, 'Bearer realm="onyx-wa admin"'
            elif caller == "bad":
                reply = await api.call(case.method, path, BAD_TOKEN, body)
                want, challenge = 401, 'Bearer realm="onyx-wa admin", error="invalid_token"'
            elif caller == "malformed":
                reply = await api.call(case.method, path, body=body, header=f"Basic {OP_TOKEN}")
                want, challenge = 401, 'Bearer realm="onyx-wa admin", error="invalid_request"'
            else:
                token = {"operator": OP_TOKEN, "tenant-a": A_TOKEN, "tenant-b": B_TOKEN}[caller]
                reply = await api.call(case.method, path, token, body)
                want, challenge = case.ok, None
                if caller == "tenant-b" and case.scoped:
                    want = 404
                if caller == "tenant-b" and case.operation == "createBot":
                    want = 403  # B asked for a bot in tenant acme
            where = f"{case.method} {case.path} as {caller}"
            if reply.status != want:
                problems.append(f"{where}: {reply.status} (want {want}) {reply.text[:200]}")
                continue
            if challenge is not None and reply.headers.get("WWW-Authenticate") != challenge:
                problems.append(f"{where}: challenge {reply.headers.get('WWW-Authenticate')}")
            if want == 404:
                # exactly what a missing object answers: nothing tells that it exists
                expected = {
                    "bot": f"no bot with id {ids['bot']}",
                }["bot"]
                if reply.json != {"error": {"code": "not_found", "message": expected}}:
                    problems.append(f"{where}: leaky 404 body {reply.text}")
            if caller == "tenant-b" and case.scoped:
                # and nothing changed: the objects are still there, unchanged
                bot = await api.call("GET", f"/api/v1/bots/{ids['bot']}")
                links = await api.call("GET", f"/api/v1/bots/{ids['bot']}/users")
                configs = await api.call("GET", f"/api/v1/bots/{ids['bot']}/chat-configs")
                if bot.status != 200 or bot.json["name"] == "Renamed":
                    problems.append(f"{where}: the bot changed")
                if len(links.json["items"]) != 1 or links.json["items"][0]["language"]:
                    problems.append(f"{where}: the user link changed")
                if len(configs.json["items"]) != 2:
                    problems.append(f"{where}: the chat configs changed")
            if case.operation == "listBots" and caller == "tenant-b":
                if any(b["tenant_id"] != "globex" for b in reply.json["items"]):
                    problems.append(f"{where}: sees another tenant's bots")
            if case.operation == "listAudit" and caller == "tenant-b":
                if any(e["tenant_id"] != "globex" for e in reply.json["items"]):
                    problems.append(f"{where}: sees another tenant's audit entries")
    assert not problems, "\n".join(problems)
    api.assert_no_secrets()


async def test_tenant_admin_404_equals_missing_and_never_403(api: Api) -> None:
    a = await api.seed("acme")
    b = await api.seed("globex")
    missing = 2_000_000
    for path in (
        "/api/v1/bots/{bot}",
        "/api/v1/bots/{bot}/chat-configs",
        "/api/v1/bots/{bot}/chat-configs/{config}",
        "/api/v1/bots/{bot}/users/{user}",
    ):
        other = await api.call("GET", path.format(**b), A_TOKEN)
        none = await api.call("GET", path.format(**{**b, "bot": missing}), A_TOKEN)
        assert other.status == none.status == 404
        assert other.json["error"]["message"].replace(str(b["bot"]), "N") == none.json["error"][
            "message"
        ].replace(str(missing), "N")
    # a config of B's bot reached through A's own bot is not there either
    cross = await api.call("GET", f"/api/v1/bots/{a['bot']}/chat-configs/{b['config']}", A_TOKEN)
    assert cross.status == 404
    cross = await api.call(
        "PATCH", f"/api/v1/bots/{a['bot']}/chat-configs/{b['config']}", A_TOKEN, {"disabled": True}
    )
    assert cross.status == 404
    # B's list filter cannot name tenant acme
    listed = await api.call("GET", "/api/v1/bots?tenant_id=acme", B_TOKEN)
    assert listed.status == 200 and listed.json["items"] == []
    audit = await api.call("GET", "/api/v1/audit?tenant_id=acme", B_TOKEN)
    assert audit.status == 200 and audit.json["items"] == []
    # operators filter freely
    listed = await api.call("GET", "/api/v1/bots?tenant_id=globex", OP_TOKEN)
    assert [x["id"] for x in listed.json["items"]] == [b["bot"]]
    # unknown API paths need a token too (no probing without one), then answer 404
    assert (await api.call("GET", "/api/v1/nothing", None)).status == 401
    assert (await api.call("GET", "/api/v1/nothing", A_TOKEN)).status == 404
    # tenant admins: own tenant by default, operator-only quotas refused
    own = await api.call("POST", "/api/v1/bots", A_TOKEN, api.bot_body(None))
    assert own.status == 201 and own.json["tenant_id"] == "acme"
    quota = await api.call(
        "PATCH", f"/api/v1/bots/{a['bot']}", A_TOKEN, {"tenant_questions_per_day": 5}
    )
    assert quota.status == 403 and "only operators" in quota.json["error"]["message"]
    quota = await api.call(
        "PATCH", f"/api/v1/bots/{a['bot']}", OP_TOKEN, {"tenant_questions_per_day": 5}
    )
    assert quota.status == 200 and quota.json["tenant_questions_per_day"] == 5
    who = await api.call("GET", "/api/v1/whoami", B_TOKEN)
    assert who.json == {"role": "tenant", "name": "carol", "tenant_id": "globex"}


# --- secrets ------------------------------------------------------------------------------------


async def test_secrets_are_write_only_everywhere(api: Api, caplog) -> None:
    caplog.set_level(logging.INFO)  # what runs in production (DEBUG: drivers print SQL)
    ids = await api.seed("acme")
    bid = ids["bot"]
    onyx = await api.add_bot(
        "acme",
        answer_backend="onyx",
        onyx_base_url="https://onyx.example.com",
        onyx_api_key=api.secret("onyx"),
    )
    assert onyx["has_onyx_api_key"] is True and onyx["answer_backend"] == "onyx"
    for name in ("access_token", "app_secret", "verify_token", "onyx_api_key"):
        assert name not in onyx
    await api.call("PATCH", f"/api/v1/bots/{bid}", body={"access_token": api.secret("patched")})
    await api.call(
        "PUT", f"/api/v1/bots/{bid}/users/{ids['user']}", body={"onyx_api_key": api.secret("k2")}
    )
    # a failing request that carries a secret must not echo it either
    bad = await api.call(
        "PATCH", f"/api/v1/bots/{bid}", body={"app_secret": api.secret("long") + "x" * 700}
    )
    assert bad.status == 400 and "app_secret" in bad.text
    dup = api.bot_body("acme")
    dup["phone_number_id"] = onyx["phone_number_id"]
    assert (await api.call("POST", "/api/v1/bots", body=dup)).status == 409
    # read everything back, as every caller
    for token in (OP_TOKEN, A_TOKEN, B_TOKEN):
        await api.call("GET", "/api/v1/bots", token)
        await api.call("GET", f"/api/v1/bots/{bid}", token)
        await api.call("GET", f"/api/v1/bots/{bid}/chat-configs", token)
        await api.call("GET", f"/api/v1/bots/{bid}/users", token)
        await api.call("GET", f"/api/v1/bots/{bid}/users/{ids['user']}", token)
        await api.call("GET", "/api/v1/audit", token)
    await api.call("GET", "/openapi.json", None)
    link = await api.call("GET", f"/api/v1/bots/{bid}/users/{ids['user']}")
    assert link.json["has_onyx_api_key"] is True and "onyx_api_key" not in link.json
    api.assert_no_secrets()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "admin change" in logged
    for value in (*api.secrets, *ALL_TOKENS, ids["user"]):
        assert value not in logged
    # the database holds ciphertext, and the repository decrypts it
    plain = await api.store.bots.get(bid)  # type: ignore[attr-defined]
    assert plain.access_token.startswith("patched-SECRET-")
    user_key = await api.store.users.onyx_api_key(bid, ids["user"])  # type: ignore[attr-defined]
    assert user_key.startswith("k2-SECRET-")


async def test_secret_rotation_decrypts_through_the_repository(api: Api) -> None:
    bot = await api.add_bot("acme")
    before = await api.store.bots.get(bot["id"])  # type: ignore[attr-defined]
    for name in ("access_token", "app_secret", "verify_token", "onyx_api_key"):
        value = api.secret(name)
        reply = await api.call("PUT", f"/api/v1/bots/{bot['id']}/secrets/{name}", A_TOKEN,
                               {"value": value})  # fmt: skip
        assert reply.status == 204 and reply.text == ""
        after = await api.store.bots.get(bot["id"])  # type: ignore[attr-defined]
        assert getattr(after, name) == value
    after = await api.store.bots.get(bot["id"])  # type: ignore[attr-defined]
    assert after.phone_number_id == before.phone_number_id and after.name == before.name
    shown = await api.call("GET", f"/api/v1/bots/{bot['id']}")
    assert shown.json["has_onyx_api_key"] is True
    unknown = await api.call(
        "PUT", f"/api/v1/bots/{bot['id']}/secrets/password", body={"value": "x"}
    )
    assert unknown.status == 400 and "access_token" in unknown.json["error"]["message"]
    empty = await api.call(
        "PUT", f"/api/v1/bots/{bot['id']}/secrets/app_secret", body={"value": ""}
    )
    assert empty.status == 400
    rows = [r for r in await audit_rows(api.store) if r.action == "bot.rotate_secret"]  # type: ignore[attr-defined]
    assert [r.changes["fields"] for r in rows] == [
        ["access_token"], ["app_secret"], ["verify_token"], ["onyx_api_key"]
    ]  # fmt: skip
    assert {r.actor for r in rows} == {"bob"}
    api.assert_no_secrets()


# --- audit --------------------------------------------------------------------------------------


async def test_every_change_is_audited_without_values(api: Api) -> None:
    store = api.store  # type: ignore[attr-defined]
    bot = (await api.call("POST", "/api/v1/bots", A_TOKEN, api.bot_body(None, name="Help"))).json
    bid = bot["id"]
    steps = [
        ("PATCH", f"/api/v1/bots/{bid}", UNNAMED_TOKEN, {"name": "Help desk", "waba_id": "77"}),
        ("POST", f"/api/v1/bots/{bid}/disable", OP_TOKEN, None),
        ("POST", f"/api/v1/bots/{bid}/enable", OP_TOKEN, None),
        ("PUT", f"/api/v1/bots/{bid}/secrets/verify_token", A_TOKEN, {"value": api.secret("v")}),
        ("POST", f"/api/v1/bots/{bid}/chat-configs", A_TOKEN, {"match_kind": "default"}),
        # a duplicate rolls back in the database: its audit row rolls back with it
        ("POST", f"/api/v1/bots/{bid}/chat-configs", A_TOKEN, {"match_kind": "default"}),
        # a rule the repository checks (onyx needs a key): refused before anything is written
        ("PATCH", f"/api/v1/bots/{bid}", A_TOKEN,
         {"answer_backend": "onyx", "onyx_base_url": "https://onyx.example.com"}),
        ("PATCH", f"/api/v1/bots/{bid}/chat-configs/CONFIG", A_TOKEN, {"disabled": True}),
        ("PUT", f"/api/v1/bots/{bid}/users/4915199999999", A_TOKEN,
         {"onyx_user_email": "x@example.com", "onyx_api_key": api.secret("u")}),
        ("PUT", f"/api/v1/bots/{bid}/users/4915199999999", A_TOKEN, {"opted_out": True}),
        ("DELETE", f"/api/v1/bots/{bid}/users/4915199999999", A_TOKEN, None),
        ("DELETE", f"/api/v1/bots/{bid}/chat-configs/CONFIG", A_TOKEN, None),
        ("DELETE", f"/api/v1/bots/{bid}", OP_TOKEN, None),
    ]  # fmt: skip
    config_id = None
    statuses = []
    for method, path, token, body in steps:
        reply = await api.call(method, path.replace("CONFIG", str(config_id)), token, body)
        statuses.append(reply.status)
        if path.endswith("chat-configs") and method == "POST" and reply.status == 201:
            config_id = reply.json["id"]
    assert statuses == [200, 200, 200, 204, 201, 409, 400, 200, 201, 200, 204, 204, 204]
    # refused or failed requests leave no row
    assert (await api.call("POST", "/api/v1/bots", B_TOKEN, api.bot_body("acme"))).status == 403
    assert (await api.call("PATCH", "/api/v1/bots/999999", OP_TOKEN, {"name": "x"})).status == 404
    rows = await audit_rows(store)
    got = [
        (r.actor, r.role, r.tenant_id, r.action, r.object_type, r.changes["fields"]) for r in rows
    ]
    fp = fingerprint(UNNAMED_TOKEN)
    assert got == [
        ("bob", "tenant", "acme", "bot.create", "bot",
         ["access_token", "app_secret", "name", "phone_number_id", "tenant_id", "verify_token"]),
        (fp, "tenant", "acme", "bot.update", "bot", ["name", "waba_id"]),
        ("alice", "operator", "acme", "bot.disable", "bot", ["enabled"]),
        ("alice", "operator", "acme", "bot.enable", "bot", ["enabled"]),
        ("bob", "tenant", "acme", "bot.rotate_secret", "bot", ["verify_token"]),
        ("bob", "tenant", "acme", "chat_config.create", "chat_config", ["match_kind"]),
        ("bob", "tenant", "acme", "chat_config.update", "chat_config", ["disabled"]),
        ("bob", "tenant", "acme", "user_link.create", "user_link", ["onyx_api_key", "onyx_user_email"]),
        ("bob", "tenant", "acme", "user_link.update", "user_link", ["opted_out"]),
        ("bob", "tenant", "acme", "user_link.delete", "user_link", []),
        ("bob", "tenant", "acme", "chat_config.delete", "chat_config", []),
        ("alice", "operator", "acme", "bot.delete", "bot", []),
    ]  # fmt: skip
    bot_ids = {r.object_id for r in rows if r.object_type == "bot"}
    assert bot_ids == {str(bid)}
    assert {r.object_id for r in rows if r.object_type == "chat_config"} == {str(config_id)}
    # users appear hashed: the audit log outlives a forgotten user's data
    assert all("4915199999999" not in (r.object_id or "") for r in rows)
    dump = json.dumps(
        [[str(getattr(r, c.name)) for c in AuditLogEntry.__table__.columns] for r in rows]
    )
    for value in (*api.secrets, *ALL_TOKENS, "x@example.com"):
        assert value not in dump
    # the API view: newest first, paging, filters, tenant scoping
    page = await api.call("GET", "/api/v1/audit?limit=5", A_TOKEN)
    assert [e["action"] for e in page.json["items"]][:2] == ["bot.delete", "chat_config.delete"]
    assert len(page.json["items"]) == 5 and page.json["next_before"]
    rest = await api.call(
        "GET", f"/api/v1/audit?limit=100&before={page.json['next_before']}", A_TOKEN
    )
    assert len(rest.json["items"]) == 7 and rest.json["next_before"] is None
    assert page.json["items"][0]["at"].endswith(("Z", "+00:00"))
    only = await api.call("GET", "/api/v1/audit?object_type=user_link&action=user_link.update")
    assert [e["action"] for e in only.json["items"]] == ["user_link.update"]
    assert (await api.call("GET", "/api/v1/audit", B_TOKEN)).json["items"] == []
    assert (await api.call("GET", "/api/v1/audit?limit=0")).status == 400
    assert (await api.call("GET", "/api/v1/audit?before=abc")).status == 400
    api.assert_no_secrets()


# --- validation ---------------------------------------------------------------------------------


async def test_validation_errors_are_400_with_clear_messages(api: Api) -> None:
    bot = await api.add_bot("acme")
    bots, one = "/api/v1/bots", f"/api/v1/bots/{bot['id']}"
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", bots, b"{not json", "malformed JSON"),
        ("POST", bots, b"", "JSON object body is required"),
        ("POST", bots, b"[1, 2]", "must be a JSON object"),
        ("POST", bots, {**api.bot_body("acme"), "colour": "red"}, "colour"),
        ("POST", bots, api.bot_body(None), "tenant_id is required"),
        ("POST", bots, {**api.bot_body("acme"), "phone_number_id": "+49 151"}, "phone_number_id"),
        ("POST", bots, {**api.bot_body("acme"), "tenant_id": "bad tenant!"}, "tenant_id"),
        ("POST", bots, {**api.bot_body("acme"), "answer_backend": "gpt"}, "answer_backend"),
        ("POST", bots, {**api.bot_body("acme"), "answer_backend": "onyx"},
         "needs onyx_base_url and onyx_api_key"),
        ("POST", bots, {**api.bot_body("acme"), "onyx_base_url": "ftp://x"}, "http"),
        ("POST", bots, {**api.bot_body("acme"), "throughput_per_s": 5000}, "throughput_per_s"),
        ("POST", bots, {k: v for k, v in api.bot_body("acme").items() if k != "app_secret"},
         "app_secret"),
        ("PATCH", one, {"name": None}, "name"),
        ("PATCH", one, {"enabled": "yes please"}, "enabled"),
        ("PATCH", one, {"tenant_id": "globex"}, "tenant_id"),
        ("PATCH", one, {"phone_number_id": "1"}, "phone_number_id"),
        ("PATCH", one, {"verify_token": ""}, "verify_token"),
        ("PATCH", one, {"name": "x" * 201}, "name"),
        ("POST", f"{one}/chat-configs", {"match_kind": "chat"}, "match_kind"),
        ("POST", f"{one}/chat-configs", {"match_kind": "wa_id"}, "needs the wa_id"),
        ("POST", f"{one}/chat-configs", {"match_kind": "default", "match_value": "1"},
         "give no match_value"),
        ("POST", f"{one}/chat-configs", {"match_kind": "group", "match_value": "g",
                                         "allowed_senders": "everyone"}, "allowed_senders"),
        ("PUT", f"{one}/users/491", {"onyx_user_email": "not-an-email"}, "email"),
        ("PUT", f"{one}/users/491", {"sources_on": None}, "sources_on"),
        ("PUT", f"{one}/users/491", {"onyx_api_key": ""}, "onyx_api_key"),
        ("PUT", f"{one}/users/{'9' * 129}", {}, "1-128 characters"),
    ]  # fmt: skip
    problems = []
    for method, path, body, needle in cases:
        raw = body if isinstance(body, bytes) else None
        reply = await api.call(method, path, OP_TOKEN, None if raw is not None else body, raw=raw)
        error = (reply.json or {}).get("error", {})
        if (
            reply.status != 400
            or error.get("code") != "invalid_request"
            or needle not in reply.text
        ):
            problems.append(f"{method} {path} {body!r:.80}: {reply.status} {reply.text[:300]}")
    assert not problems, "\n".join(problems)
    # duplicates are conflicts, not validation errors
    config = {"match_kind": "default"}
    assert (await api.call("POST", f"{one}/chat-configs", body=config)).status == 201
    again = await api.call("POST", f"{one}/chat-configs", body=config)
    assert again.status == 409 and "already has a default" in again.json["error"]["message"]
    # nothing above changed the bot
    assert (await api.call("GET", one)).json == {**bot, "updated_at": bot["updated_at"]}
    assert (await api.call("PATCH", one, body={})).json["name"] == bot["name"]
    assert (await api.call("GET", f"{bots}/abc")).status == 404
    assert (await api.call("GET", f"{bots}/99999999999999")).status == 404
    assert (await api.call("DELETE", bots)).status == 405
    api.assert_no_secrets()


async def test_user_link_put_creates_then_updates_and_keeps_absent_fields(api: Api) -> None:
    bot = await api.add_bot("acme")
    user = "US.1349" + "7" * 10  # a BSUID (has a dot): URL-encoded in the path
    path = f"/api/v1/bots/{bot['id']}/users/{quote(user, safe='')}"
    created = await api.call("PUT", path, A_TOKEN, {"onyx_user_email": "a@example.com",
                                                     "onyx_api_key": api.secret("k")})  # fmt: skip
    assert created.status == 201 and created.json["user_id"] == user
    changed = await api.call("PUT", path, A_TOKEN, {"language": "de"})
    assert changed.status == 200
    assert changed.json["onyx_user_email"] == "a@example.com" and changed.json["has_onyx_api_key"]
    cleared = await api.call("PUT", path, A_TOKEN, {"onyx_api_key": None, "onyx_user_email": None})
    assert cleared.json["has_onyx_api_key"] is False and cleared.json["onyx_user_email"] is None
    assert cleared.json["language"] == "de"
    listing = await api.call("GET", f"/api/v1/bots/{bot['id']}/users?limit=1", A_TOKEN)
    assert [x["user_id"] for x in listing.json["items"]] == [user]
    assert listing.json["next_after"] == user
    after = await api.call("GET", f"/api/v1/bots/{bot['id']}/users?after={quote(user)}")
    assert after.json == {"items": [], "next_after": None}
    assert (await api.call("DELETE", path, A_TOKEN)).status == 204
    assert (await api.call("DELETE", path, A_TOKEN)).status == 404
    assert (await api.call("GET", path, A_TOKEN)).status == 404


# --- cache invalidation -------------------------------------------------------------------------


async def test_changes_reach_running_lookups_through_the_config_version(api: Api) -> None:
    """A worker's ConfigLookup and the ingress's BotDirectory on the same DB see API changes."""
    from store.cache import BotDirectory
    from store.repo import BotRepository, ChatConfigRepository, UserLinkRepository
    from streams.config import ConfigLookup

    store = api.store  # type: ignore[attr-defined]
    # what a running process holds: its own repositories on its own sessions
    directory = BotDirectory(BotRepository(store.sessions, store.box), ttl_s=0)
    lookup = ConfigLookup(
        directory=directory,
        chats=ChatConfigRepository(store.sessions),
        users=UserLinkRepository(store.sessions),
        ttl_s=0,
    )
    created = await api.add_bot("acme")
    bid, pnid = created["id"], created["phone_number_id"]
    user, chat = "4915155550000", "4915155550000"
    bot = await lookup.bot(pnid)
    assert bot is not None
    assert (await lookup.chat(bot, chat, False)).show_sources is True  # built-in, now cached
    assert await lookup.linked_email(bot, user) is None  # cached
    assert await lookup.linked_onyx_key(bot, user) is None
    versions = [await config_version(store.sessions)]

    async def changed(method: str, path: str, body: Any = None) -> Any:
        reply = await api.call(method, f"/api/v1/bots/{bid}{path}", A_TOKEN, body)
        assert reply.status in (200, 201, 204), reply.text
        versions.append(await config_version(store.sessions))
        assert versions[-1] > versions[-2], f"{method} {path} did not bump the config version"
        return reply.json

    config = await changed(
        "POST", "/chat-configs", {"match_kind": "default", "show_sources": False}
    )
    bot = await lookup.bot(pnid)
    assert (await lookup.chat(bot, chat, False)).show_sources is False
    await changed("PATCH", f"/chat-configs/{config['id']}", {"respond_tag_only": True})
    bot = await lookup.bot(pnid)
    assert (await lookup.chat(bot, chat, True)).rule.respond_tag_only is True
    key = api.secret("userkey")
    await changed(
        "PUT", f"/users/{user}", {"onyx_user_email": "me@example.com", "onyx_api_key": key}
    )
    bot = await lookup.bot(pnid)
    assert await lookup.linked_email(bot, user) == "me@example.com"
    assert await lookup.linked_onyx_key(bot, user) == key
    await changed("DELETE", f"/users/{user}")
    bot = await lookup.bot(pnid)
    assert await lookup.linked_email(bot, user) is None
    await changed("DELETE", f"/chat-configs/{config['id']}")
    bot = await lookup.bot(pnid)
    assert (await lookup.chat(bot, chat, False)).show_sources is True
    secret = api.secret("app")
    await changed("PUT", "/secrets/app_secret", {"value": secret})
    assert (await directory.get(pnid)).app_secret == secret
    verify = api.secret("verify")
    await changed("PUT", "/secrets/verify_token", {"value": verify})
    assert verify in await directory.verify_tokens()
    await changed("PATCH", "", {"default_persona_id": 9})
    assert (await lookup.bot(pnid)).default_persona_id == 9
    await changed("POST", "/disable")
    assert await directory.get(pnid) is None
    await changed("POST", "/enable")
    assert (await lookup.bot(pnid)) is not None
    await changed("DELETE", "")
    assert await directory.get(pnid) is None
    api.assert_no_secrets()


# --- OpenAPI and health -------------------------------------------------------------------------


async def test_openapi_document_is_valid_and_complete(api: Api) -> None:
    from openapi_spec_validator import validate

    reply = await api.call("GET", "/openapi.json", None)
    assert reply.status == 200
    doc = reply.json
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["operationId"] == route.operation_id
        assert "401" in op["responses"]
    for secret in ("access_token", "app_secret", "verify_token", "onyx_api_key"):
        prop = doc["components"]["schemas"]["BotCreate"]["properties"][secret]
        assert prop.get("writeOnly") is True or any(
            o.get("writeOnly") for o in prop.get("anyOf", [])
        )
        assert secret not in doc["components"]["schemas"]["BotOut"]["properties"]
    assert doc["components"]["schemas"]["BotCreate"]["additionalProperties"] is False
    # real responses validate against the document's response schemas
    ids = await api.seed("acme")

    def check(path: str, method: str, status: int, body: Any) -> None:
        schema = doc["paths"][path][method]["responses"][str(status)]["content"][
            "application/json"
        ]["schema"]
        jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)

    check("/api/v1/bots", "get", 200, (await api.call("GET", "/api/v1/bots")).json)
    check("/api/v1/bots/{bot_id}", "get", 200,
          (await api.call("GET", f"/api/v1/bots/{ids['bot']}")).json)  # fmt: skip
    check("/api/v1/bots/{bot_id}/chat-configs", "get", 200,
          (await api.call("GET", f"/api/v1/bots/{ids['bot']}/chat-configs")).json)  # fmt: skip
    check("/api/v1/bots/{bot_id}/users", "get", 200,
          (await api.call("GET", f"/api/v1/bots/{ids['bot']}/users")).json)  # fmt: skip
    check("/api/v1/audit", "get", 200, (await api.call("GET", "/api/v1/audit")).json)
    check("/api/v1/bots/{bot_id}", "get", 404,
          (await api.call("GET", "/api/v1/bots/999999")).json)  # fmt: skip
    check("/api/v1/bots", "post", 400,
          (await api.call("POST", "/api/v1/bots", body={"x": 1})).json)  # fmt: skip
    health = await api.call("GET", "/healthz", None)
    assert health.status == 200 and health.json == {"status": "alive"}


# --- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("short=operator", "shorter than 16"),
        ("0123456789abcdefXYZ", "TOKEN=operator"),
        ("0123456789abcdefXYZ=admin", "operator or tenant"),
        ("0123456789abcdefXYZ=tenant", "valid tenant id"),
        ("0123456789abcdefXYZ=tenant:bad tenant", "valid tenant id"),
        ("0123456789abcdefXYZ=operator:acme", "sees every tenant"),
        ("0123456789abcdefXYZ=operator,0123456789abcdefXYZ=tenant:a", "configured twice"),
    ],
)
def test_token_setting_errors_name_the_entry_not_the_token(spec: str, needle: str) -> None:
    with pytest.raises(SettingsError, match=needle) as info:
        parse_tokens(spec)
    assert "0123456789abcdef" not in str(info.value) and "ONYX_WA_ADMIN_TOKENS entry #" in str(
        info.value
    )


def test_token_parsing_and_lookup() -> None:
    auth = TokenAuth.from_setting(f" {TOKENS} , ")
    assert len(auth) == 4 and OP_TOKEN not in repr(auth)
    principal, reason = auth.authenticate(f"Bearer {A_TOKEN}")
    assert principal is not None and (principal.role, principal.tenant_id) == ("tenant", "acme")
    assert principal.name == "bob" and reason is None
    assert auth.authenticate(f"bearer  {OP_TOKEN} ")[0].is_operator  # type: ignore[union-attr]
    assert auth.authenticate(None) == (None, None)
    assert auth.authenticate(f"Bearer {A_TOKEN}x") == (None, "invalid_token")
    assert auth.authenticate(f"Token {A_TOKEN}") == (None, "invalid_request")
    unnamed, _ = auth.authenticate(f"Bearer {UNNAMED_TOKEN}")
    assert unnamed is not None and unnamed.name == fingerprint(UNNAMED_TOKEN)
    assert UNNAMED_TOKEN not in unnamed.name


# --- the command --------------------------------------------------------------------------------


CLI = [sys.executable, "-m", "onyx_wa.cli"]


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "ONYX_WA_DATA_DIR": str(tmp_path / "data"), "ONYX_WA_LOG_LEVEL": "INFO"}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "ONYX_WA_ENCRYPTION_KEY"):
        env[name] = ""
    env["ONYX_WA_ADMIN_TOKENS"] = TOKENS
    return env


def _one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("onyx-wa: error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    for token in ALL_TOKENS:
        assert token not in result.stderr


def test_admin_command_refuses_to_start_without_tokens_or_schema(home) -> None:
    run = lambda env: subprocess.run(  # noqa: E731
        [*CLI, "admin", "--port", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    _one_line_error(run({**home, "ONYX_WA_ADMIN_TOKENS": ""}), "ONYX_WA_ADMIN_TOKENS is not set")
    _one_line_error(run({**home, "ONYX_WA_ADMIN_TOKENS": "x=operator"}), "shorter than 16")
    _one_line_error(run(home), "onyx-wa db upgrade")


def test_admin_command_serves_and_stops_on_sigterm(home) -> None:
    subprocess.run([*CLI, "db", "upgrade"], env=home, check=True, capture_output=True, timeout=60)
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "admin", "--port", str(port)],
        env=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert json.load(r) == {"status": "alive"}
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "admin did not start"
                time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/whoami",
            headers={"Authorization": f"Bearer {OP_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert json.load(r)["role"] == "operator"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/bots", timeout=5)
        assert denied.value.code == 401
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            assert json.load(r) == {"database": True, "schema_current": True}
        # a second instance on the same port is refused in one line
        second = subprocess.run(
            [*CLI, "admin", "--port", str(port)],
            env=home,
            capture_output=True,
            text=True,
            timeout=60,
        )
        _one_line_error(second, "already in use")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for token in ALL_TOKENS:
        assert token not in err
