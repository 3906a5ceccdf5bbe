"""GraphClient over real HTTP against the simulator (and hostile servers), and the error table."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from egress.errors import ErrorAction, backoff_s, classify
from egress.graph import GraphApiError, GraphClient
from sim.spec import load_validator
from sim.whatsapp import SIM_KEY, Faults, build_sim_app

TOKEN = "EAAGsecret" + uuid.uuid4().hex


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


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, web.Application]]:
    app = build_sim_app(validator=load_validator())
    async with serve(app) as base:
        yield base, app


def text(to: str = "15551234567") -> dict:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": "hi"},
    }


async def test_send_and_mark_read(sim: tuple[str, web.Application]) -> None:
    base, app = sim
    client = GraphClient(base, "v25.0")
    try:
        wamid = await client.send_message("1001", TOKEN, text())
        assert wamid.startswith("wamid.")
        await client.mark_read("1001", TOKEN, "wamid.IN", typing=True)
        await client.mark_read("1001", TOKEN, "wamid.IN2", typing=False)
    finally:
        await client.aclose()
    state = app[SIM_KEY]
    assert [m["id"] for m in state.messages] == [wamid]
    assert [(a["message_id"], a["typing"]) for a in state.actions] == [
        ("wamid.IN", True),
        ("wamid.IN2", False),
    ]


CODES = [
    (130429, ErrorAction.RETRY),
    (131056, ErrorAction.RETRY),
    (4, ErrorAction.RETRY),
    (80007, ErrorAction.RETRY),
    (131016, ErrorAction.RETRY),
    (131000, ErrorAction.RETRY),
    (1, ErrorAction.RETRY),
    (2, ErrorAction.RETRY),
    (131057, ErrorAction.RETRY),
    (131048, ErrorAction.PAUSE),
    (131049, ErrorAction.PAUSE),
    (368, ErrorAction.PAUSE),
    (131031, ErrorAction.PAUSE),
    (190, ErrorAction.PAUSE),
    (131026, ErrorAction.PERMANENT),
    (131047, ErrorAction.PERMANENT),
    (100, ErrorAction.PERMANENT),
    (131008, ErrorAction.PERMANENT),
    (131009, ErrorAction.PERMANENT),
    (132001, ErrorAction.PERMANENT),
    (131030, ErrorAction.PERMANENT),
    (999999, ErrorAction.PERMANENT),  # unknown code on a 4xx
]


async def test_every_error_class_is_parsed_and_mapped(sim: tuple[str, web.Application]) -> None:
    base, app = sim
    app[SIM_KEY].faults = Faults(sequence=deque(c for c, _ in CODES))
    async with contextlib.AsyncExitStack() as stack:
        client = GraphClient(base)
        stack.push_async_callback(client.aclose)
        for code, action in CODES:
            with pytest.raises(GraphApiError) as info:
                await client.send_message("1002", TOKEN, text())
            err = info.value
            assert (err.code, err.action) == (code, action)
            assert err.http_status == (401 if code == 190 else 400)
            assert err.fbtrace_id and err.message and err.details
            assert TOKEN not in str(err) and TOKEN not in repr(client)


async def test_validation_error_and_wrong_token(sim: tuple[str, web.Application]) -> None:
    base, _ = sim
    client = GraphClient(base)
    try:
        bad = {**text(), "text": {"body": "x" * 5000}}
        with pytest.raises(GraphApiError) as info:
            await client.send_message("1003", TOKEN, bad)
        assert info.value.code == 100 and info.value.action is ErrorAction.PERMANENT
        assert "4096" in (info.value.details or "")
        with pytest.raises(GraphApiError) as info:
            await client.send_message("1003", "", text())
        assert info.value.code == 190 and info.value.action is ErrorAction.PAUSE
    finally:
        await client.aclose()


def hostile(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def _html_502(_: web.Request) -> web.Response:
    return web.Response(status=502, text="<html>Bad gateway</html>", content_type="text/html")


async def _html_404(_: web.Request) -> web.Response:
    return web.Response(status=404, text="<html>nope</html>", content_type="text/html")


async def _bare_429(_: web.Request) -> web.Response:
    return web.Response(status=429)


async def _no_id(_: web.Request) -> web.Response:
    return web.json_response({"messaging_product": "whatsapp", "messages": []})


async def _empty_200(_: web.Request) -> web.Response:
    return web.Response(status=200, body=b"")


async def _bad_utf8_200(_: web.Request) -> web.Response:
    return web.Response(status=200, body=b'{"messages": [{"id": "\xff\xfe"}]}')


async def _echo_token(request: web.Request) -> web.Response:
    token = request.headers["Authorization"][7:]
    return web.json_response(
        {
            "error": {
                "message": f"bad token {token}",
                "code": 131000,
                "error_data": {"details": f"token={token}"},
            }
        },
        status=500,
    )


@pytest.mark.parametrize(
    ("handler", "code", "http_status", "action"),
    [
        (_html_502, None, 502, ErrorAction.RETRY),
        (_html_404, None, 404, ErrorAction.PERMANENT),
        (_bare_429, None, 429, ErrorAction.RETRY),
        (_no_id, None, 200, ErrorAction.PERMANENT),
        (_empty_200, None, 200, ErrorAction.PERMANENT),
        (_bad_utf8_200, None, 200, ErrorAction.PERMANENT),
        (_echo_token, 131000, 500, ErrorAction.RETRY),
    ],
)
async def test_non_meta_answers(
    handler: Callable[[web.Request], Awaitable[web.Response]],
    code: int | None,
    http_status: int,
    action: ErrorAction,
) -> None:
    async with serve(hostile(handler)) as base:
        client = GraphClient(base)
        try:
            with pytest.raises(GraphApiError) as info:
                await client.send_message("1004", TOKEN, text())
        finally:
            await client.aclose()
    err = info.value
    assert (err.code, err.http_status, err.action) == (code, http_status, action)
    assert TOKEN not in str(err) and TOKEN not in err.message and TOKEN not in (err.details or "")


async def test_an_answer_only_the_lenient_parser_reads_is_still_read() -> None:
    """orjson parses the answers first; JSON it refuses and ``json`` reads (NaN here) must not
    turn an accepted send into an error (the message would be retried: sent twice)."""

    async def nan_200(_: web.Request) -> web.Response:
        body = '{"messages":[{"id":"wamid.LENIENT"}],"latency":NaN}'
        return web.Response(text=body, content_type="application/json")

    async with serve(hostile(nan_200)) as base:
        client = GraphClient(base)
        try:
            assert await client.send_message("1004", TOKEN, text()) == "wamid.LENIENT"
        finally:
            await client.aclose()


async def test_timeout_and_connection_refused_are_retry() -> None:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    async with serve(hostile(slow)) as base:
        client = GraphClient(base, timeout_s=0.2)
        try:
            with pytest.raises(GraphApiError) as info:
                await client.send_message("1005", TOKEN, text())
        finally:
            await client.aclose()
    assert info.value.code is None and info.value.action is ErrorAction.RETRY
    assert "timeout" in info.value.message
    client = GraphClient(base)  # the server is gone now
    try:
        with pytest.raises(GraphApiError) as info:
            await client.mark_read("1005", TOKEN, "wamid.X")
    finally:
        await client.aclose()
    assert info.value.action is ErrorAction.RETRY and TOKEN not in str(info.value)


async def test_get_media_two_steps_size_bound_and_expiry() -> None:
    app = build_sim_app(validator=load_validator())
    data = uuid.uuid4().bytes * 64
    async with serve(app) as base:
        client = GraphClient(base)
        try:
            app_state = app[SIM_KEY]
            app_state.media["m1"] = {
                "bytes": data,
                "mime_type": "image/jpeg",
                "sha256": hashlib.sha256(data).hexdigest(),
                "owner": None,
            }
            body, mime = await client.get_media("m1", TOKEN, max_bytes=len(data))
            assert (body, mime) == (data, "image/jpeg")
            with pytest.raises(GraphApiError, match="larger than") as info:
                await client.get_media("m1", TOKEN, max_bytes=len(data) - 1)
            assert info.value.action is ErrorAction.PERMANENT
            with pytest.raises(GraphApiError) as info:
                await client.get_media("nope", TOKEN, max_bytes=10**6)
            assert info.value.code == 100 and info.value.http_status == 404
            app_state.media["m1"]["sha256"] = "0" * 64
            with pytest.raises(GraphApiError, match="sha256"):
                await client.get_media("m1", TOKEN, max_bytes=10**6)
        finally:
            await client.aclose()


async def test_get_media_stream_bound_when_the_size_is_a_lie() -> None:
    big = b"x" * 300_000

    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/file"):
            return web.Response(body=big, content_type="application/pdf")
        url = f"{request.url.origin()}/file"
        return web.json_response({"url": url, "mime_type": "application/pdf", "file_size": 10})

    async with serve(hostile(handler)) as base:
        client = GraphClient(base)
        try:
            with pytest.raises(GraphApiError, match="larger than"):
                await client.get_media("m2", TOKEN, max_bytes=100_000)
            body, mime = await client.get_media("m2", TOKEN, max_bytes=400_000)
            assert len(body) == len(big) and mime == "application/pdf"
        finally:
            await client.aclose()


def test_classify_without_meta_code() -> None:
    assert classify(None, None) is ErrorAction.RETRY  # timeout
    assert classify(None, 503) is ErrorAction.RETRY
    assert classify(None, 408) is ErrorAction.RETRY
    assert classify(None, 400) is ErrorAction.PERMANENT
    assert classify(424242, 500) is ErrorAction.RETRY  # unknown code with a 5xx
    assert classify(424242, None) is ErrorAction.PERMANENT  # unknown code on a failed status
    assert classify(200, 403) is ErrorAction.PAUSE  # permission problem: every send fails
    assert classify(132015, 400) is ErrorAction.PERMANENT


def test_backoff() -> None:
    assert [backoff_s(131056, n) for n in (1, 2, 3, 4)] == [1, 4, 16, 64]
    assert backoff_s(131056, 10) == 300
    samples = [backoff_s(130429, 3) for _ in range(200)]
    assert all(0 <= s <= 2.0 for s in samples) and len(set(samples)) > 100
    assert max(backoff_s(None, 30) for _ in range(50)) <= 300
    with pytest.raises(ValueError):
        backoff_s(2, 0)
