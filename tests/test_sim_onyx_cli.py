"""``onyx-wa sim --onyx-port P`` really serves the fake Onyx: a subprocess, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from onyx_wa.broker import free_port


@pytest.fixture
def sim_with_onyx(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The CLI's ``sim`` with a fake Onyx on free ports; yields (onyx URL, WhatsApp sim URL)."""
    sim_port, onyx_port = free_port(), free_port()
    env = {
        **os.environ,
        "ONYX_WA_DATA_DIR": str(tmp_path / "data"),
        "ONYX_WA_LOG_LEVEL": "WARNING",
        "ONYX_WA_INGRESS_HOST": "127.0.0.1",
    }
    log = (tmp_path / "sim.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "onyx_wa.cli", "sim", "--port", str(sim_port)]
        + ["--onyx-port", str(onyx_port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    log.close()
    try:
        yield f"http://127.0.0.1:{onyx_port}", f"http://127.0.0.1:{sim_port}"
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=15) is not None
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            pytest.fail("onyx-wa sim did not stop on SIGTERM")


async def _wait_up(http: aiohttp.ClientSession, url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"{url} did not come up within {timeout_s:.0f} s")


async def test_sim_onyx_port_serves_streaming_send_chat_message(
    sim_with_onyx: tuple[str, str],
) -> None:
    onyx, whatsapp = sim_with_onyx
    headers = {"Authorization": f"Bearer on_{uuid.uuid4().hex}"}
    async with aiohttp.ClientSession() as http:
        await _wait_up(http, f"{onyx}/_fake/requests")
        await _wait_up(http, f"{whatsapp}/healthz")  # the WhatsApp simulator runs beside it
        body = {
            "message": "How many vacation days do full-time employees get?",
            "chat_session_info": {"persona_id": 1},
            "stream": True,
            "include_citations": True,
            "origin": "api",
        }
        async with http.post(
            f"{onyx}/api/chat/send-chat-message", json=body, headers=headers
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            raw = await response.read()
        # NDJSON: one JSON value per line, nothing else
        packets = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        session_id = packets[0]["chat_session_id"]
        assert uuid.UUID(session_id)
        assert isinstance(packets[1]["reserved_assistant_message_id"], int)
        assert isinstance(packets[1]["user_message_id"], int)
        kinds = [p["obj"]["type"] for p in packets[2:]]
        assert kinds[0] == "chat_heartbeat" and kinds[1] == "message_start"
        assert kinds[-1] == "stop" and "citation_info" in kinds and "message_delta" in kinds
        assert all(p["placement"]["turn_index"] == 0 for p in packets[2:])
        start = packets[2 + kinds.index("message_start")]["obj"]
        assert start["final_documents"][0]["document_id"] == "confluence__vacation-policy"
        text = "".join(
            p["obj"]["content"] for p in packets[2:] if p["obj"]["type"] == "message_delta"
        )
        assert "25 vacation days" in text
        assert "[[1]](https://wiki.example.com/hr/vacation)" in text

        # the control API of the same process: the request was recorded, key hashed
        async with http.get(f"{onyx}/_fake/requests") as response:
            recorded = await response.json()
        assert [r["path"] for r in recorded] == ["/api/chat/send-chat-message"]
        assert headers["Authorization"][7:] not in json.dumps(recorded)
        async with http.get(f"{onyx}/_fake/sessions/{session_id}") as response:
            assert (await response.json())["persona_id"] == 1

        # an injected error packet arrives as Onyx's StreamingError object
        async with http.post(
            f"{onyx}/_fake/faults", json={"error_packet": True, "retryable": False, "count": 1}
        ) as response:
            assert response.status == 200
        async with http.post(
            f"{onyx}/api/chat/send-chat-message", json=body, headers=headers
        ) as response:
            lines = [json.loads(x) for x in (await response.text()).splitlines() if x.strip()]
        assert lines[-1]["is_retryable"] is False and lines[-1]["error_code"] == "VALIDATION_ERROR"

        # no key: the same 401 body as Onyx
        async with http.post(f"{onyx}/api/chat/send-chat-message", json=body) as response:
            assert response.status == 401
