"""The WhatsApp Cloud API simulator over real HTTP: validation, auth, limits, faults, media,
the 24 h window and the statuses it posts back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sim import spec as spec_mod
from sim.spec import SpecValidator, limit_errors, load_validator
from sim.whatsapp import build_sim_app

TOKEN = "EAAG-test-token"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Receiver:
    """A webhook endpoint that keeps the raw bytes and headers of every POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, str]] = []
        self.arrived = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/webhooks/whatsapp", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append((await request.read(), request.headers.get("X-Hub-Signature-256", "")))
        self.arrived.set()
        return web.Response(text="ok")

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for body, _ in self.posts:
            value = json.loads(body)["entry"][0]["changes"][0]["value"]
            out += value.get("statuses", [])
        return out

    async def wait_for(self, n_statuses: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.statuses()) < n_statuses:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim(http: aiohttp.ClientSession) -> AsyncIterator[str]:
    async with serve(build_sim_app(validator=load_validator())) as base:
        yield base


def pnid() -> str:
    return str(100000 + uuid.uuid4().int % 899999)


def user() -> str:
    return "1555" + str(uuid.uuid4().int % 10**7).zfill(7)


def text(to: str, body: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": body},
        **extra,
    }


def buttons(to: str, n: int = 2, title: str = "Yes") -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "Was this helpful?"},
            "footer": {"text": "feedback"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": f"b{i}", "title": title}} for i in range(n)
                ]
            },
        },
    }


def listing(to: str, rows: int = 3, row_title: str = "Source", button: str = "Sources") -> dict:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": "All sources"},
            "action": {
                "button": button,
                "sections": [
                    {
                        "title": "Docs",
                        "rows": [
                            {"id": f"r{i}", "title": row_title, "description": "d"}
                            for i in range(rows)
                        ],
                    }
                ],
            },
        },
    }


async def post(
    http: aiohttp.ClientSession,
    base: str,
    number: str,
    payload: Any,
    *,
    token: str | None = TOKEN,
    version: str = "v25.0",
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers["Content-Type"] = "application/json"
    async with http.post(f"{base}/{version}/{number}/messages", data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def assert_meta_error(status: int, body: dict[str, Any], http_status: int, code: int) -> None:
    assert status == http_status, body
    err = body["error"]
    assert err["code"] == code
    assert err["type"] == "OAuthException"
    assert isinstance(err["message"], str) and err["message"]
    assert err["error_data"]["messaging_product"] == "whatsapp"
    assert err["fbtrace_id"]


# --- accepted sends -----------------------------------------------------------------------------


async def test_valid_sends_are_accepted_recorded_and_answered_like_meta(
    http: aiohttp.ClientSession, sim: str
) -> None:
    number, to = pnid(), user()
    sends = [
        text(to, "héllo *world* 👋", context={"message_id": "wamid.Q1"}),
        buttons(to, 3),
        listing(to, 10),
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "reaction",
            "reaction": {"message_id": "wamid.Q1", "emoji": "👍"},
        },
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "image",
            "image": {"link": "https://example.com/a.png", "caption": "c" * 1024},
        },
        text("120363025246125486@g.us", "to the group", recipient_type="group"),
    ]
    wamids = []
    for i, payload in enumerate(sends):
        status, body = await post(http, sim, number, payload, version=f"v2{i % 3 + 3}.0")
        assert status == 200, body
        assert body["messaging_product"] == "whatsapp"
        assert body["contacts"][0]["input"] == payload["to"]
        wamids.append(body["messages"][0]["id"])
    assert len(set(wamids)) == len(wamids) and all(w.startswith("wamid.") for w in wamids)
    delivered = await get_json(http, f"{sim}/_sim/messages?phone_number_id={number}")
    assert [m["id"] for m in delivered] == wamids
    first = delivered[0]
    assert first["to"] == to and first["type"] == "text" and first["context"] == "wamid.Q1"
    assert first["body"] == "héllo *world* 👋" and first["payload"] == sends[0]
    assert delivered[1]["body"] == "Was this helpful?"
    assert delivered[3]["body"] == "👍"
    assert delivered[4]["body"] == "c" * 1024
    assert all(m["time"] for m in delivered)


async def test_bsuid_recipient_is_answered_with_user_id(
    http: aiohttp.ClientSession, sim: str
) -> None:
    payload = text("x")
    del payload["to"]
    payload["recipient"] = "US.13491208655302741918"
    status, body = await post(http, sim, pnid(), payload)
    assert status == 200, body
    assert body["contacts"] == [
        {"input": "US.13491208655302741918", "user_id": payload["recipient"]}
    ]


async def test_mark_read_with_typing_is_an_action_not_a_message(
    http: aiohttp.ClientSession, sim: str
) -> None:
    number = pnid()
    read = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.IN1",
        "typing_indicator": {"type": "text"},
    }
    assert await post(http, sim, number, read) == (200, {"success": True})
    plain = {k: v for k, v in read.items() if k != "typing_indicator"}
    assert await post(http, sim, number, plain) == (200, {"success": True})
    actions = await get_json(http, f"{sim}/_sim/actions?phone_number_id={number}")
    assert [(a["message_id"], a["typing"]) for a in actions] == [
        ("wamid.IN1", True),
        ("wamid.IN1", False),
    ]
    assert await get_json(http, f"{sim}/_sim/messages?phone_number_id={number}") == []


# --- rejected sends -----------------------------------------------------------------------------


def _without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


INVALID = {
    "missing messaging_product": _without(text("15551234567"), "messaging_product"),
    "unknown type": {**text("15551234567"), "type": "hologram"},
    "text over 4096": text("15551234567", "x" * 4097),
    "empty text": text("15551234567", ""),
    "text is a string": {**text("15551234567"), "text": "hello"},
    "four buttons": buttons("15551234567", 4),
    "button title over 20": buttons("15551234567", 1, "t" * 21),
    "eleven list rows": listing("15551234567", 11),
    "row title over 24": listing("15551234567", 1, "r" * 25),
    "list button over 20": listing("15551234567", 1, button="b" * 21),
    "interactive to a group": {**buttons("120363@g.us"), "recipient_type": "group"},
    "mark read in a group": {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.X",
        "recipient_type": "group",
    },
    "mark read without message id": {"messaging_product": "whatsapp", "status": "read"},
    "body is a list": [1, 2],
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_invalid_payloads_are_rejected_with_code_100(
    http: aiohttp.ClientSession, sim: str, case: str
) -> None:
    number = pnid()
    status, body = await post(http, sim, number, INVALID[case])
    assert_meta_error(status, body, 400, 100)
    assert body["error"]["error_data"]["details"]
    assert await get_json(http, f"{sim}/_sim/messages?phone_number_id={number}") == []
    assert await get_json(http, f"{sim}/_sim/actions?phone_number_id={number}") == []


async def test_non_json_body_is_code_100(http: aiohttp.ClientSession, sim: str) -> None:
    status, body = await post(http, sim, pnid(), b"{not json")
    assert_meta_error(status, body, 400, 100)


async def test_interactive_limits_name_the_problem(http: aiohttp.ClientSession, sim: str) -> None:
    payload = buttons(user(), 1)
    payload["interactive"]["footer"]["text"] = "f" * 61
    payload["interactive"]["body"]["text"] = "b" * 1025
    status, body = await post(http, sim, pnid(), payload)
    assert_meta_error(status, body, 400, 100)
    details = body["error"]["error_data"]["details"]
    assert "footer" in details and "1024" in details


async def test_unknown_version_path_is_not_the_graph_api(
    http: aiohttp.ClientSession, sim: str
) -> None:
    async with http.post(f"{sim}/latest/{pnid()}/messages", json=text(user())) as resp:
        assert resp.status == 404


# --- auth ---------------------------------------------------------------------------------------


async def test_missing_or_malformed_token_is_190(http: aiohttp.ClientSession, sim: str) -> None:
    status, body = await post(http, sim, pnid(), text(user()), token=None)
    assert_meta_error(status, body, 401, 190)
    async with http.post(
        f"{sim}/v25.0/{pnid()}/messages", json=text(user()), headers={"Authorization": "Basic x"}
    ) as resp:
        assert_meta_error(resp.status, await resp.json(), 401, 190)


async def test_token_map_is_enforced_per_number(http: aiohttp.ClientSession) -> None:
    a, b = pnid(), pnid()
    app = build_sim_app(validator=load_validator(), tokens={a: "token-a", b: "token-b"})
    async with serve(app) as base:
        status, body = await post(http, base, a, text(user()), token="token-b")
        assert_meta_error(status, body, 401, 190)
        assert "token-b" not in json.dumps(body)
        assert (await post(http, base, a, text(user()), token="token-a"))[0] == 200
        unknown, _ = await post(http, base, pnid(), text(user()), token="token-a")
        assert unknown == 401


# --- limits -------------------------------------------------------------------------------------


async def test_throughput_80_per_second_per_number(http: aiohttp.ClientSession, sim: str) -> None:
    number, other = pnid(), pnid()
    results = await asyncio.gather(
        *(post(http, sim, number, text(user())) for _ in range(160)),
    )
    codes = [b["error"]["code"] if s != 200 else 200 for s, b in results]
    accepted = codes.count(200)
    assert codes.count(130429) == 160 - accepted
    assert 8 <= accepted < 160  # the burst passes, the rest is throttled within the second
    assert all(s == 400 for s, b in results if s != 200)
    # another number has its own bucket
    assert (await post(http, sim, other, text(user())))[0] == 200


async def test_throughput_is_configurable_per_number(http: aiohttp.ClientSession, sim: str) -> None:
    number = pnid()
    async with http.post(f"{sim}/_sim/numbers/{number}", json={"throughput_per_s": 1e6}) as r:
        assert r.status == 200
    results = await asyncio.gather(*(post(http, sim, number, text(user())) for _ in range(160)))
    assert [s for s, _ in results].count(200) == 160
    async with http.post(f"{sim}/_sim/numbers/{number}", json={"throughput_per_s": -1}) as r:
        assert r.status == 400


async def test_pair_rate_131056_per_recipient(http: aiohttp.ClientSession) -> None:
    app = build_sim_app(validator=load_validator(), pair_burst=2)
    async with serve(app) as base:
        number, to = pnid(), user()
        assert (await post(http, base, number, text(to)))[0] == 200
        assert (await post(http, base, number, text(to)))[0] == 200
        status, body = await post(http, base, number, text(to))
        assert_meta_error(status, body, 400, 131056)
        assert (await post(http, base, number, text(user())))[0] == 200


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status"), [(130429, 400), (131026, 400), (131048, 400), (190, 401)]
)
async def test_fault_injection_by_code(
    http: aiohttp.ClientSession, code: int, http_status: int
) -> None:
    async with serve(build_sim_app(validator=load_validator())) as base:
        async with http.post(f"{base}/_sim/faults", json={"codes": {str(code): 1.0}}) as r:
            assert r.status == 200
        status, body = await post(http, base, pnid(), text(user()))
        assert_meta_error(status, body, http_status, code)


async def test_faults_5xx_sequence_seed_latency_and_clear(
    http: aiohttp.ClientSession, sim: str
) -> None:
    number = pnid()
    async with http.post(f"{sim}/_sim/faults", json={"sequence": [500, 131000]}) as r:
        assert r.status == 200
    status, _ = await post(http, sim, number, text(user()))
    assert status == 500
    status, body = await post(http, sim, number, text(user()))
    assert body["error"]["code"] == 131000
    assert (await post(http, sim, number, text(user())))[0] == 200

    async def pattern() -> list[int]:
        async with http.post(f"{sim}/_sim/faults", json={"codes": {"2": 0.5}, "seed": 7}):
            pass
        return [(await post(http, sim, number, text(user())))[0] for _ in range(12)]

    first = await pattern()
    assert first == await pattern()
    assert 200 in first and 400 in first

    async with http.post(f"{sim}/_sim/faults", json={"latency_ms": 150}):
        pass
    started = asyncio.get_running_loop().time()
    assert (await post(http, sim, number, text(user())))[0] == 200
    assert asyncio.get_running_loop().time() - started >= 0.15

    async with http.delete(f"{sim}/_sim/faults") as r:
        assert r.status == 200
    async with http.post(f"{sim}/_sim/faults", json={"codes": {"2": 1.5}}) as r:
        assert r.status == 400
    async with http.post(f"{sim}/_sim/faults", json={"codes": {"x": 1}}) as r:
        assert r.status == 400
    assert (await post(http, sim, number, text(user())))[0] == 200


# --- inspection ---------------------------------------------------------------------------------


async def test_messages_since_filter_and_clear(http: aiohttp.ClientSession) -> None:
    async with serve(build_sim_app(validator=load_validator())) as base:
        number = pnid()
        _, first = await post(http, base, number, text(user(), "one"))
        [record] = await get_json(http, f"{base}/_sim/messages")
        await post(http, base, number, text(user(), "two"))
        later = await get_json(http, f"{base}/_sim/messages?since={record['time']}")
        assert [m["body"] for m in later] == ["two"]
        async with http.get(f"{base}/_sim/messages?since=yesterday") as resp:
            assert resp.status == 400
        async with http.delete(f"{base}/_sim/messages") as resp:
            assert resp.status == 200
        assert await get_json(http, f"{base}/_sim/messages") == []
        health = await get_json(http, f"{base}/healthz")
        assert health["status"] == "alive"


# --- media --------------------------------------------------------------------------------------


async def test_media_two_step_download_and_expiry(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    number = pnid()
    app = build_sim_app(validator=load_validator(), tokens={number: TOKEN}, clock=clock)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    data = b"\x89PNG" + uuid.uuid4().bytes * 100
    async with serve(app) as base:
        async with http.post(
            f"{base}/_sim/media?phone_number_id={number}",
            data=data,
            headers={"Content-Type": "image/png"},
        ) as resp:
            media_id = (await resp.json())["id"]
        async with http.get(f"{base}/v25.0/{media_id}", headers=auth) as resp:
            info = await resp.json()
        assert info["mime_type"] == "image/png" and info["file_size"] == len(data)
        assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["id"] == media_id
        async with http.get(info["url"], headers=auth) as resp:
            assert resp.status == 200 and await resp.read() == data
        async with http.get(info["url"]) as resp:
            assert resp.status == 401
        async with http.get(info["url"], headers={"Authorization": "Bearer other"}) as resp:
            assert resp.status == 401
        async with http.get(info["url"].split("?")[0] + "?ticket=nope", headers=auth) as resp:
            assert resp.status == 404
        clock.now += 301
        async with http.get(info["url"], headers=auth) as resp:
            assert resp.status == 404
        async with http.get(f"{base}/v25.0/{media_id}", headers=auth) as resp:
            fresh = await resp.json()
        async with http.get(fresh["url"], headers=auth) as resp:
            assert resp.status == 200
        async with http.get(f"{base}/v25.0/9999999", headers=auth) as resp:
            assert_meta_error(resp.status, await resp.json(), 404, 100)
        async with http.get(f"{base}/v25.0/{media_id}") as resp:
            assert_meta_error(resp.status, await resp.json(), 401, 190)


# --- webhooks: 24 h window, statuses, inbound ---------------------------------------------------


def _verify(receiver: Receiver, secret: str) -> None:
    assert receiver.posts
    for body, signature in receiver.posts:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, expected)


async def test_emitted_statuses_arrive_signed_in_order(http: aiohttp.ClientSession) -> None:
    receiver = Receiver()
    number, secret = pnid(), "app-secret-" + uuid.uuid4().hex
    async with serve(receiver.app) as hook:
        app = build_sim_app(
            validator=load_validator(),
            webhook_url=f"{hook}/webhooks/whatsapp",
            app_secrets={number: secret},
            emit_statuses=True,
            status_delays_s=(0.01, 0.05, 0.1),
        )
        async with serve(app) as base:
            to = user()
            _, body = await post(
                http, base, number, {**text(to), "biz_opaque_callback_data": "req-1:0"}
            )
            wamid = body["messages"][0]["id"]
            await receiver.wait_for(3)
            statuses = receiver.statuses()
            assert [(s["id"], s["status"]) for s in statuses] == [
                (wamid, "sent"),
                (wamid, "delivered"),
                (wamid, "read"),
            ]
            assert all(s["recipient_id"] == to for s in statuses)
            # like Meta, every status of the message echoes the send's callback data
            assert {s["biz_opaque_callback_data"] for s in statuses} == {"req-1:0"}
            _verify(receiver, secret)
            recorded = await get_json(http, f"{base}/_sim/statuses?phone_number_id={number}")
            assert [s["webhook_status"] for s in recorded] == [200, 200, 200]


async def test_window_enforced_send_accepted_then_failed_131047(
    http: aiohttp.ClientSession,
) -> None:
    receiver = Receiver()
    clock = FakeClock()
    number, secret, to = pnid(), "s-" + uuid.uuid4().hex, user()
    async with serve(receiver.app) as hook:
        app = build_sim_app(
            validator=load_validator(),
            enforce_window=True,
            webhook_url=f"{hook}/webhooks/whatsapp",
            app_secrets=lambda p: {number: secret}[p],
            clock=clock,
            status_delays_s=(0.01,),
        )
        async with serve(app) as base:
            status, body = await post(http, base, number, text(to))
            assert status == 200
            wamid = body["messages"][0]["id"]
            await receiver.wait_for(1)
            [failed] = receiver.statuses()
            assert failed["id"] == wamid and failed["status"] == "failed"
            assert failed["errors"][0]["code"] == 131047
            _verify(receiver, secret)
            assert await get_json(http, f"{base}/_sim/messages") == []

            # the user writes: the simulator's Meta side posts it and opens the window
            async with http.post(
                f"{base}/_sim/inbound",
                json={"phone_number_id": number, "from": to, "text": "hi ✓"},
            ) as resp:
                inbound = await resp.json()
            assert inbound["webhook_status"] == 200
            msg_body, _ = receiver.posts[-1]
            assert b"\\u2713" in msg_body
            value = json.loads(msg_body)["entry"][0]["changes"][0]["value"]
            assert value["messages"][0]["id"] == inbound["id"]
            assert value["messages"][0]["text"]["body"] == "hi ✓"
            assert value["contacts"][0]["wa_id"] == to
            assert (await post(http, base, number, text(to)))[0] == 200
            assert len(await get_json(http, f"{base}/_sim/messages")) == 1

            clock.now += 24 * 3600 + 1  # the window closes again
            assert (await post(http, base, number, text(to)))[0] == 200
            await receiver.wait_for(2)
            assert receiver.statuses()[-1]["status"] == "failed"
            assert len(await get_json(http, f"{base}/_sim/messages")) == 1


async def test_failed_status_is_recorded_without_a_webhook(http: aiohttp.ClientSession) -> None:
    app = build_sim_app(validator=load_validator(), enforce_window=True, status_delays_s=(0.0,))
    async with serve(app) as base:
        number = pnid()
        _, body = await post(http, base, number, text(user()))
        async with asyncio.timeout(5):
            while not (recorded := await get_json(http, f"{base}/_sim/statuses")):
                await asyncio.sleep(0.02)
        assert recorded[0]["id"] == body["messages"][0]["id"]
        assert recorded[0]["errors"][0]["code"] == 131047
        assert recorded[0]["webhook_status"] is None
        # templates may be sent outside the window
        template = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": user(),
            "type": "template",
            "template": {
                "name": "hello_world",
                "language": {"code": "en_US", "policy": "deterministic"},
            },
        }
        status, _ = await post(http, base, number, template)
        assert status == 200
        assert len(await get_json(http, f"{base}/_sim/messages")) == 1


async def test_inbound_and_config_validate_their_input(http: aiohttp.ClientSession) -> None:
    async with serve(build_sim_app(validator=load_validator())) as base:
        async with http.post(f"{base}/_sim/inbound", json={"text": "no number"}) as resp:
            assert resp.status == 400
        async with http.post(
            f"{base}/_sim/inbound", json={"phone_number_id": "1", "from": "2", "text": "x"}
        ) as resp:
            assert (await resp.json())["webhook_status"] is None  # no webhook configured
        async with http.post(f"{base}/_sim/config", json={"app_secrets": {"1": 2}}) as resp:
            assert resp.status == 400
        async with http.post(
            f"{base}/_sim/config",
            json={"webhook_url": "http://127.0.0.1:9/x", "app_secrets": {"1": "secret-x"}},
        ) as resp:
            answer = await resp.text()
        assert resp.status == 200 and "secret-x" not in answer
        async with http.post(
            f"{base}/_sim/inbound", json={"phone_number_id": "1", "from": "2", "text": "x"}
        ) as resp:
            assert resp.status == 502  # the webhook is unreachable (port 9, discard)


# --- the validator itself -----------------------------------------------------------------------


def test_callback_data_is_allowed_on_messages_as_a_string_up_to_512() -> None:
    validator = load_validator()
    if not validator.uses_spec:
        pytest.skip("the spec file is not available here")
    body = text(user())
    assert validator.validate_send({**body, "biz_opaque_callback_data": "r:0"}) == []
    assert validator.validate_send({**body, "biz_opaque_callback_data": "x" * 513})
    assert validator.validate_send({**body, "biz_opaque_callback_data": 7})
    assert validator.validate_send({**body, "biz_opaque_callback": "r:0"})  # still strict


def test_spec_catches_what_the_limit_code_alone_would_not() -> None:
    validator = load_validator()
    if not validator.uses_spec:
        pytest.skip("Meta's OpenAPI spec not found (set ONYX_WA_SIM_SPEC or ../shared/spec/)")
    payload = text("15551234567")
    payload["text"]["preview_url"] = "yes"  # a boolean in Meta's schema
    assert limit_errors(payload) == []
    assert any("preview_url" in e for e in validator.validate_send(payload))
    undeclared = text("15551234567")
    undeclared["text"]["colour"] = "red"
    assert limit_errors(undeclared) == [] and validator.validate_send(undeclared)
    assert validator.validate_send(text("15551234567")) == []


def test_without_spec_structure_and_limits_still_apply_and_warn_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spec_mod, "_warned_missing", False)
    with caplog.at_level(logging.WARNING, logger="sim.spec"):
        first, second = SpecValidator(None), SpecValidator(None)
    assert [r.message for r in caplog.records].count(
        "WhatsApp OpenAPI spec not found (set ONYX_WA_SIM_SPEC): validating the brief's limits only"
    ) == 1
    assert not first.uses_spec and not second.uses_spec
    assert first.validate_send(text("15551234567")) == []
    assert first.validate_send(_without(text("1"), "messaging_product"))
    assert first.validate_send({**text("1"), "type": "hologram"})
    assert first.validate_send(text("1", "x" * 4097))


def test_find_spec_order(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "spec.yaml"
    fake.write_text("{}")
    assert spec_mod.find_spec(fake) == fake
    assert spec_mod.find_spec(tmp_path / "missing.yaml") is None
    monkeypatch.setenv("ONYX_WA_SIM_SPEC", str(fake))
    assert spec_mod.find_spec() == fake
    monkeypatch.setenv("ONYX_WA_SIM_SPEC", str(tmp_path / "missing.yaml"))
    found = spec_mod.find_spec()
    assert found is None or found.name == spec_mod.SPEC_NAME


async def test_message_count_with_and_without_filters(
    http: aiohttp.ClientSession, sim: str
) -> None:
    """``GET /_sim/messages/count``: what the benchmark polls instead of the whole list."""
    number, first, second = pnid(), user(), user()
    for to in (first, first, second):
        status, body = await post(http, sim, number, text(to))
        assert status == 200, body
    assert await get_json(http, f"{sim}/_sim/messages/count") == {"count": 3}
    assert await get_json(http, f"{sim}/_sim/messages/count?to={first}") == {"count": 2}
    assert await get_json(http, f"{sim}/_sim/messages/count?phone_number_id=0") == {"count": 0}
    async with http.get(f"{sim}/_sim/messages/count?since=yesterday") as resp:
        assert resp.status == 400
    async with http.delete(f"{sim}/_sim/messages"):
        pass
    assert await get_json(http, f"{sim}/_sim/messages/count") == {"count": 0}
