"""Schemathesis against the admin API's own OpenAPI document, over a real socket.

The admin app (with the analytics and lag route tables, as ``onyx-wa admin`` serves it) runs in
a thread of its own with its own event loop, on PostgreSQL when one answers (else SQLite),
migrated and seeded with two tenants' bots, chat configs and user links. Schemathesis loads
``GET /openapi.json`` from that server and, for every operation, sends generated requests,
valid and invalid (its examples, coverage and fuzzing phases), once with an operator token and
once with a tenant admin's. Every response must pass schemathesis' checks: no 5xx, a status code
and content type the document declares, a body that matches the declared schema, invalid input
refused with a 4xx, and so on.

Generated path ids rarely name an existing object, so a hook sends most of them to seeded ones:
the fuzzed bodies then reach the database through real bots and configs. Deterministic
(``derandomize``); see docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

RUN = uuid.uuid4().hex[:8]
OP_TOKEN = f"op-{RUN}-fuzz-aaaaaaaaaaaaaaaa"
ACME_TOKEN = f"acme-{RUN}-fuzz-bbbbbbbbbbbbbb"
TOKENS = f"{OP_TOKEN}=operator@fuzz-op,{ACME_TOKEN}=tenant:acme@fuzz-acme"
MAX_EXAMPLES = 8
# what schemathesis got back: (role, "METHOD /path") -> status -> count
ANSWERS: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)

LAG_REPORT = {
    "at": 1_790_000_000.0,
    "groups": [
        {"group": "onyx-wa-streams", "status": "OK", "lag": 3, "lag_seconds": 1.5, "error": None,
         "partitions": [{"topic": "wa.inbound", "partition": 0, "committed": 120, "end": 123,
                         "lag": 3, "lag_seconds": 1.5, "status": "OK", "error": None}]},
    ],
}  # fmt: skip


@dataclass
class SeededBot:
    id: int
    tenant: str
    configs: list[int]  # its default config and a wa_id one
    user: str  # a user with a link to it


@dataclass
class Seeded:
    """Objects that exist in the database: ``kept`` ones (never deleted by the fuzzers) and
    ``spare`` ones that DELETE requests are sent to."""

    kept: list[SeededBot] = field(default_factory=list)
    spare: list[SeededBot] = field(default_factory=list)
    forgets: list[str] = field(default_factory=list)  # keys of published forget requests

    @property
    def bots(self) -> list[int]:
        return [b.id for b in self.kept]


@dataclass
class AdminServer:
    base: str
    seeded: Seeded
    database: str


async def _seed(ctx: Any, seeded: Seeded) -> None:
    for n in range(20):  # spare ones first: the low ids that generators like to try
        tenant = ("acme", "globex")[n % 2]
        bot = await ctx.bots().add_bot(
            tenant_id=tenant,
            phone_number_id=f"77{int(RUN, 16) % 10**6:06d}{n:04d}",
            name=f"fuzz {tenant} {n}",
            access_token=f"at-{n}",
            app_secret=f"as-{n}",
            verify_token=f"vt-{RUN}-{n}",
        )
        default = await ctx.chats().add(bot.id, match_kind="default")
        exact = await ctx.chats().add(bot.id, match_kind="wa_id", match_value=f"4915{n:08d}")
        user = f"4917{n:08d}"
        await ctx.users().upsert(bot.id, user, language="en")
        pool = seeded.spare if n < 8 else seeded.kept
        pool.append(SeededBot(bot.id, tenant, [default.id, exact.id], user))


def _serve(ready: threading.Event, stop: list[Any], out: dict[str, Any]) -> None:
    """The admin server's thread: database, migrations, seed, then serve until stopped."""

    async def main() -> None:
        from aiohttp import web
        from cryptography.fernet import Fernet

        from admin.app import AdminContext, create_app
        from admin.auth import TokenAuth
        from admin.lag import ROUTES as LAG_ROUTES
        from analytics.api import ROUTES as ANALYTICS_ROUTES
        from onyx_wa.broker import free_port
        from onyx_wa.settings import load_settings
        from store.crypto import SecretBox
        from store.db import make_engine, session_factory
        from store.migrate import upgrade
        from tests.plugins.db import _postgres, _probe_async, _sqlite

        probe = await _probe_async()
        databases = _postgres(probe.server) if probe.server is not None else None
        if databases is not None:
            db = await databases.__anext__()
        else:
            db = _sqlite(out["tmp"])
        upgrade(db.url)
        engine = make_engine(db.url)
        seeded = Seeded()

        async def forget(key: str, record: dict[str, Any]) -> None:
            seeded.forgets.append(key)

        async def lag(groups: list[str] | None) -> dict[str, Any]:
            return LAG_REPORT

        async def ready_check() -> dict[str, bool]:  # start_admin's, with nothing to fail
            return {"database": True, "schema_current": True}

        key = Fernet.generate_key().decode()
        context = AdminContext(
            sessions=session_factory(engine),
            box=SecretBox(key),
            auth=TokenAuth.from_setting(TOKENS),
            settings=load_settings(data_dir=out["tmp"], encryption_key=key),  # user hashes
            forget_publisher=forget,
            lag_source=lag,
            ready_check=ready_check,
        )
        await _seed(context, seeded)
        app = create_app(context, extra_routes=(*ANALYTICS_ROUTES, *LAG_ROUTES))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stopped = asyncio.Event()
        stop.append((asyncio.get_running_loop(), stopped))
        out["server"] = AdminServer(f"http://127.0.0.1:{port}", seeded, db.kind)
        ready.set()
        try:
            await stopped.wait()
        finally:
            await runner.cleanup()
            await engine.dispose()
            if databases is not None:
                await databases.aclose()  # drops the database

    try:
        asyncio.run(main())
    except BaseException as exc:  # surfaced by the fixture
        out["error"] = exc
        ready.set()


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServer]:
    ready = threading.Event()
    stop: list[Any] = []
    out: dict[str, Any] = {"tmp": tmp_path_factory.mktemp("fuzz-admin")}
    thread = threading.Thread(target=_serve, args=(ready, stop, out), daemon=True)
    thread.start()
    assert ready.wait(120), "the admin server did not start"
    if "error" in out:
        raise out["error"]
    yield out["server"]
    loop, stopped = stop[0]
    loop.call_soon_threadsafe(stopped.set)
    thread.join(60)


def load_schema(admin_server: AdminServer, token: str, role: str) -> Any:
    """The served document, with the caller's token as schemathesis' own auth header (so its
    negative cases that drop or break the header are sent as such)."""
    schema = schemathesis.openapi.from_url(admin_server.base + "/openapi.json")
    schema.config.update(
        base_url=admin_server.base,
        headers={"Authorization": f"Bearer {token}"},
        request_timeout=30,
    )
    seeded = admin_server.seeded

    @schema.hook
    def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
        """Send two of three generated bot ids to a seeded bot (DELETEs: every one, to a spare
        bot, so the kept ones outlive the run), with its own config and user ids."""
        bot_id = (path_parameters or {}).get("bot_id")
        # only ids the document allows: a negative case must stay negative
        if not isinstance(bot_id, int) or isinstance(bot_id, bool) or bot_id < 1:
            return path_parameters
        deleting = context.operation.method.upper() == "DELETE"
        if not deleting and not bot_id % 3:
            return path_parameters
        pool = seeded.spare if deleting else seeded.kept
        bot = pool[bot_id % len(pool)]
        path_parameters["bot_id"] = bot.id
        config_id = path_parameters.get("config_id")
        if isinstance(config_id, int) and not isinstance(config_id, bool) and config_id >= 1:
            path_parameters["config_id"] = bot.configs[config_id % 2]
        user_id = path_parameters.get("user_id")
        if isinstance(user_id, str) and 1 <= len(user_id) <= 128 and len(user_id) % 3:
            path_parameters["user_id"] = bot.user
        return path_parameters

    @schema.hook
    def after_call(context: Any, case: Any, response: Any) -> None:
        ANSWERS[role, case.operation.label][response.status_code] += 1

    return schema


@pytest.fixture
def operator_schema(admin_server: AdminServer) -> Any:
    return load_schema(admin_server, OP_TOKEN, "operator")


@pytest.fixture
def tenant_schema(admin_server: AdminServer) -> Any:
    return load_schema(admin_server, ACME_TOKEN, "tenant")


as_operator = schemathesis.pytest.from_fixture("operator_schema")
as_tenant_admin = schemathesis.pytest.from_fixture("tenant_schema")


FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
FUZZ_MORE = settings(FUZZ, max_examples=150)


# Every check schemathesis has (no 5xx, declared status codes, content types, headers and
# response schemas, invalid data refused, unsupported methods answered 405, ...) except one:
# "schema-valid request rejected" cannot hold for rules across fields that JSON Schema does not
# express (an operator must name tenant_id; answer_backend "onyx" needs a URL and a key; a wa_id
# config needs the wa_id; an e-mail address must be one). Those answer a documented 400.
EXCLUDED = [positive_data_acceptance]


@as_operator.parametrize()
@FUZZ
def test_operator_requests_conform_to_the_openapi_document(case: Any) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED)


@as_tenant_admin.parametrize()
@FUZZ
def test_tenant_admin_requests_conform_to_the_openapi_document(case: Any) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED)


def test_the_fuzzing_reached_every_operation_and_the_server_survived(
    admin_server: AdminServer,
) -> None:
    """After the two runs above (pytest keeps file order): every operation was called with
    both roles, every write and every id path was refused at least once, most operations
    succeeded at least once, and the server is alive with its data."""
    if not ANSWERS:
        pytest.skip("runs after the schemathesis tests of this module")
    document = requests.get(admin_server.base + "/openapi.json", timeout=10).json()
    labels = {f"{m.upper()} {path}" for path, ops in document["paths"].items() for m in ops}
    labels.discard("GET /openapi.json")  # schemathesis does not call the document it tests
    succeeded = set()
    for label in sorted(labels):
        for role in ("operator", "tenant"):
            assert ANSWERS[role, label], f"{label}: never called as {role}"
        answers = ANSWERS["operator", label]
        if any(code < 300 for code in answers):
            succeeded.add(label)
        if label.startswith(("POST", "PUT", "PATCH", "DELETE")) or "{" in label:
            assert any(400 <= code < 500 for code in answers), f"{label}: never refused"
    # the seeded ids make most generated requests reach real objects (a body that satisfies
    # every rule across fields, e.g. for a new chat config, is rarer)
    assert len(succeeded) >= 0.8 * len(labels), sorted(labels - succeeded)
    # a 202 from "forget a user" means its forget request was published, and only then
    forgotten = sum(
        answers[202] for (_, label), answers in ANSWERS.items() if label.endswith("/data")
    )
    assert len(admin_server.seeded.forgets) == forgotten
    headers = {"Authorization": f"Bearer {OP_TOKEN}"}
    assert requests.get(admin_server.base + "/healthz", timeout=10).status_code == 200
    bots = requests.get(admin_server.base + "/api/v1/bots", headers=headers, timeout=10)
    audit = requests.get(admin_server.base + "/api/v1/audit", headers=headers, timeout=10)
    assert bots.status_code == audit.status_code == 200
    left = {b["id"] for b in bots.json()["items"]}
    assert set(admin_server.seeded.bots) <= left, "a kept bot was deleted"
    assert audit.json()["items"], "the fuzzers changed things, so the audit log has rows"


# --- hostile values schemathesis does not send ------------------------------------------------
# Its strings are valid Unicode without NULs, its numbers mostly small, its headers ASCII, its
# JSON shallow. A database refuses exactly those: PostgreSQL rejects NUL in text and JSONB, int4
# columns overflow at 2**31, UTF-8 cannot encode a lone surrogate, JSON has no NaN; and a deep
# enough document exhausts the parser's recursion.

BASE_BODY = {  # the smallest valid body of each write, so only the fuzzed field is wrong
    "createBot": lambda: {"tenant_id": "acme", "phone_number_id": f"9{uuid.uuid4().int % 10**14}",
                          "access_token": "a", "app_secret": "b", "verify_token": "c"},
    "createChatConfig": lambda: {"match_kind": "wa_id",
                                 "match_value": f"9{uuid.uuid4().int % 10**9}"},
    "rotateSecret": lambda: {"value": "v"},
}  # fmt: skip

# JSON text fragments (not Python values: a deep document cannot even be built as one)
hostile_text = st.one_of(
    st.builds(lambda a, b: a + "\x00" + b, st.text(max_size=5), st.text(max_size=5)),
    st.builds(lambda a, c: a + c, st.text(max_size=5), st.characters(categories=["Cs"])),
    st.sampled_from(["", " ", "\u202e", "x" * 5000]),
).map(json.dumps)
hostile_number = st.sampled_from(
    ["2147483648", "2147483647", "-2147483649", "9223372036854775808", "1" + "0" * 30, "-1",
     "0", "1e308", "1e400", "-0.0", "5e-324", "NaN", "Infinity", "-Infinity", "true"]
)  # fmt: skip
hostile_deep = st.sampled_from([50, 500, 5000, 50_000]).map(lambda n: "[" * n + "]" * n)
hostile_scalar = hostile_text | hostile_number
hostile = st.one_of(
    hostile_scalar,
    hostile_deep,
    st.lists(hostile_scalar, min_size=1, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
    st.tuples(hostile_text, hostile_scalar).map(lambda kv: "{" + kv[0] + ":" + kv[1] + "}"),
)


def body_fields(document: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(operationId, method, path, field) for every property of every request body."""
    schemas = document["components"]["schemas"]
    found = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            body = op.get("requestBody")
            if body is None:
                continue
            ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            found += [(op["operationId"], method.upper(), path, name)
                      for name in sorted(schemas[ref]["properties"])]  # fmt: skip
    return found


def documented(document: dict[str, Any], method: str, path: str) -> set[int]:
    return {int(code) for code in document["paths"][path][method.lower()]["responses"]}


def concrete(path: str, seeded: Seeded, pick: int) -> str:
    """``path`` with the ids of a kept bot (acme's for even ``pick``), its config and user."""
    bot = seeded.kept[pick % len(seeded.kept)]
    return (
        path.replace("{bot_id}", str(bot.id))
        .replace("{config_id}", str(bot.configs[pick // len(seeded.kept) % 2]))
        .replace("{user_id}", bot.user)
        .replace("{secret}", "app_secret")
    )


def test_hostile_values_in_every_body_field_get_a_documented_4xx(admin_server: AdminServer) -> None:
    document = requests.get(admin_server.base + "/openapi.json", timeout=10).json()
    fields = body_fields(document)
    assert len(fields) > 40, "the document lists the request bodies' fields"
    seen: Counter[int] = Counter()
    # the base bodies are valid: a 400 below is the fuzzed field's
    for operation, method, path, _ in dict.fromkeys((f[:3] + ("",)) for f in fields):
        reply = requests.request(
            method,
            admin_server.base + concrete(path, admin_server.seeded, 1),
            json=BASE_BODY.get(operation, dict)(),
            headers={"Authorization": f"Bearer {OP_TOKEN}"},
            timeout=30,
        )
        assert reply.status_code < 300, f"{operation}: {reply.status_code} {reply.text[:200]}"

    @FUZZ_MORE
    @given(target=st.sampled_from(fields), value=hostile, pick=st.integers(0, 100),
           operator=st.booleans())  # fmt: skip
    def fuzz(target: tuple[str, str, str, str], value: str, pick: int, operator: bool) -> None:
        operation, method, path, name = target
        base = BASE_BODY.get(operation, dict)()
        base.pop(name, None)
        body = json.dumps(base)[:-1] + ("," if base else "") + json.dumps(name) + ":" + value
        token = OP_TOKEN if operator else ACME_TOKEN
        reply = requests.request(
            method,
            admin_server.base + concrete(path, admin_server.seeded, pick),
            data=(body + "}").encode("utf-8", "surrogatepass"),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=30,
        )
        seen[reply.status_code] += 1
        assert reply.status_code < 500, f"{method} {path} {name}={value[:80]}: {reply.text[:300]}"
        assert reply.status_code in documented(document, method, path), reply.text[:300]
        assert requests.get(admin_server.base + "/healthz", timeout=10).status_code == 200

    fuzz()
    assert seen[400] > 100, seen


def test_hostile_query_path_and_header_values_never_get_a_5xx(admin_server: AdminServer) -> None:
    document = requests.get(admin_server.base + "/openapi.json", timeout=10).json()
    queries = [
        (path, p["name"])
        for path, ops in document["paths"].items()
        for p in ops.get("get", {}).get("parameters", [])
        if p["in"] == "query"
    ]
    raw = st.binary(min_size=1, max_size=12)

    @FUZZ_MORE
    @given(
        kind=st.sampled_from(["query", "user_id", "authorization"]),
        query=st.sampled_from(queries),
        value=hostile_number | raw.map(lambda b: quote(b, safe="")) | st.sampled_from(
            ["%00", "%ED%A0%80", "x%00y", "%FF", "1%20", "\u0661"]),
        header=raw.map(lambda b: b"Bearer " + b.replace(b"\r", b"").replace(b"\n", b"")),
        pick=st.integers(0, 100),
    )  # fmt: skip
    def fuzz(kind: str, query: tuple[str, str], value: str, header: bytes, pick: int) -> None:
        headers: dict[str, Any] = {"Authorization": f"Bearer {OP_TOKEN}"}
        if kind == "query":
            path, name = query
            url = admin_server.base + concrete(path, admin_server.seeded, pick)
            url += "?" + name + "=" + value
            method = "GET"
        elif kind == "user_id":
            path = "/api/v1/bots/{bot_id}/users/{user_id}"
            method = ("GET", "PUT", "DELETE")[pick % 3]
            url = admin_server.base + concrete(path, admin_server.seeded, pick).rsplit("/", 1)[0]
            url += "/" + value
        else:
            path, method = "/api/v1/whoami", "GET"
            url = admin_server.base + path
            headers = {"Authorization": header}
        reply = requests.request(method, url, headers=headers, data=b"{}", timeout=30)
        assert reply.status_code < 500, f"{method} {url}: {reply.text[:300]}"
        if kind == "authorization":  # 400: a byte HTTP forbids, refused by aiohttp's parser
            assert reply.status_code in (400, 401), reply.text[:300]
        assert requests.get(admin_server.base + "/healthz", timeout=10).status_code == 200

    fuzz()
