"""``onyx-wa demo``: the embedded stack, a scripted conversation, and a strict verdict.

The script plays Meta's side through the simulator's webhook sender (signed exactly like Meta
signs): a question, a follow-up, a feedback tap, a duplicate delivery (the same webhook three
times), a group message that mentions the bot, and a command. The verdict: every expected reply
arrived at the simulator exactly once. The stack runs on free ports in a fresh data directory, so
the demo never collides with a running ``onyx-wa up`` and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from onyx_wa.broker import free_port
from onyx_wa.settings import Settings, load_settings

TENANT = "acme"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550001111"
APP_SECRET = "demo-app-secret"  # noqa: S105 - a throwaway secret for the local demo
VERIFY_TOKEN = "demo-verify-token"  # noqa: S105
ACCESS_TOKEN = "demo-access-token"  # noqa: S105
USER = "15551234567"
GROUP = "120363025246125244"


@dataclass
class Step:
    """One user action and what the bot must answer (matched by reply threading)."""

    label: str
    send: Any  # async callable(sender) -> wamid of the user's message
    expect_reply: bool = True
    expect_contains: tuple[str, ...] = ()
    wamid: str | None = None


@dataclass
class Transcript:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


def demo_settings(base: Settings, data_dir: Path) -> Settings:
    """The user's settings with a fresh data dir and free ports (embedded stack only)."""
    values = base.model_dump()
    values.update(
        data_dir=data_dir,
        database_url=None,
        kafka_bootstrap_servers=None,
        broker_port=free_port(),
        ingress_port=free_port(),
        sim_port=free_port(),
        worker_web_port=free_port(),
        graph_api_url=None,
        public_ingress_url=None,
        encryption_key=None,
        partitions=4,
        topic_prefix="",
        kafka_session_timeout_s=6.0,
    )
    return load_settings(**values)


async def _add_demo_bot(settings: Settings) -> None:
    from onyx_wa.bots import add_bot

    await add_bot(
        settings,
        tenant_id=TENANT,
        phone_number_id=PHONE_NUMBER_ID,
        app_secret=APP_SECRET,
        verify_token=VERIFY_TOKEN,
        access_token=ACCESS_TOKEN,
        name="Acme Assistant",
        display_phone_number=DISPLAY_NUMBER,
        answer_backend="local",
    )


async def _sim_messages(http: aiohttp.ClientSession, settings: Settings) -> list[dict[str, Any]]:
    async with http.get(f"{settings.graph_base_url}/_sim/messages") as resp:
        resp.raise_for_status()
        return list(await resp.json())


async def _wait_for_replies(
    http: aiohttp.ClientSession, settings: Settings, wamids: set[str], timeout_s: float
) -> list[dict[str, Any]]:
    """Poll the simulator until every question has a reply (then a short quiet period)."""
    deadline = time.monotonic() + timeout_s
    messages: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        messages = await _sim_messages(http, settings)
        answered = {m.get("context") for m in messages}
        if wamids <= answered:
            await asyncio.sleep(2.0)  # let any duplicate show itself
            return await _sim_messages(http, settings)
        await asyncio.sleep(0.25)
    return messages


async def run_demo(base: Settings, *, keep_running: bool = False, timeout_s: float = 90) -> bool:
    """Run the scripted conversation; True only if every expected reply arrived exactly once."""
    from onyx_wa.stack import EmbeddedStack
    from sim.meta import MetaWebhookSender

    data_dir = Path(tempfile.mkdtemp(prefix="onyx-wa-demo-"))
    settings = demo_settings(base, data_dir)
    stack = EmbeddedStack(settings)
    transcript = Transcript()
    started = time.monotonic()
    try:
        print("starting the embedded stack (broker, worker, ingress, simulator)...", flush=True)
        await stack.start(say=False, before_children=_add_demo_bot)
        print(f"stack up in {time.monotonic() - started:.1f} s\n", flush=True)
        async with aiohttp.ClientSession() as http:
            verify = await http.get(
                settings.ingress_url,
                params={
                    "hub.mode": "subscribe",
                    "hub.verify_token": VERIFY_TOKEN,
                    "hub.challenge": "1158201444",
                },
            )
            handshake = await verify.text()
            transcript.say(f"[meta] webhook verification → {verify.status} {handshake}")
            if verify.status != 200 or handshake != "1158201444":
                transcript.problems.append("webhook verification failed")
            meta = MetaWebhookSender(settings.ingress_url, {PHONE_NUMBER_ID: APP_SECRET}, http)
            ok = await _play(meta, http, settings, transcript, timeout_s)
        return ok and not transcript.problems
    finally:
        if keep_running:
            print("stack left running; Ctrl-C to stop", flush=True)
            with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
                await asyncio.Event().wait()
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _play(
    meta: Any,
    http: aiohttp.ClientSession,
    settings: Settings,
    transcript: Transcript,
    timeout_s: float,
) -> bool:
    from streams.addressing import request_id_for

    expected: dict[str, tuple[str, tuple[str, ...]]] = {}

    async def ask(label: str, text: str, *, must: tuple[str, ...] = (), **kw: Any) -> str:
        wamid = await meta.send_text(PHONE_NUMBER_ID, USER, text, **kw)
        transcript.say(f"[user] {text}")
        expected[wamid] = (label, must)
        return wamid

    first = await ask("question", "How many vacation days do I get?", must=("[1]",))
    replies = await _wait_for_replies(http, settings, {first}, timeout_s)
    _show_replies(transcript, replies, {first})
    follow = await ask("follow-up", "And how do I request them?")
    await _wait_for_replies(http, settings, {first, follow}, timeout_s)
    # feedback: tap 👍 on the first answer (the button id names tenant and answer)
    answer_ref = request_id_for(TENANT, first)
    tap = await meta.send_button_reply(
        PHONE_NUMBER_ID, USER, f"fb:{TENANT}:{answer_ref}:up", "👍 Helpful"
    )
    transcript.say("[user] (taps 👍 Helpful)")
    expected[tap] = ("feedback", ())
    # duplicate delivery: the same webhook body three times (Meta retries)
    body, dup = meta.build_text_body(PHONE_NUMBER_ID, USER, "How do I connect to the VPN?")
    for _ in range(3):
        status = await meta.post(body)
        if status != 200:
            transcript.problems.append(f"duplicate delivery answered {status}")
    transcript.say("[user] How do I connect to the VPN?   (delivered 3 times)")
    expected[dup] = ("duplicate", ())
    group = await meta.send_text(
        PHONE_NUMBER_ID,
        USER,
        f"@{DISPLAY_NUMBER} how do I report a security incident?",
        group_id=GROUP,
        mentions=[DISPLAY_NUMBER],
    )
    transcript.say(f"[user in group {GROUP}] @bot how do I report a security incident?")
    expected[group] = ("group", ())
    help_ = await ask("command", "/help")
    del help_
    replies = await _wait_for_replies(http, settings, set(expected), timeout_s)
    _show_replies(transcript, replies, set(expected) - {first})
    return _verdict(transcript, expected, replies)


def _show_replies(transcript: Transcript, replies: list[dict[str, Any]], wamids: set[str]) -> None:
    for reply in replies:
        if reply.get("context") in wamids:
            body = (reply.get("body") or "").strip()
            shown = body if len(body) < 600 else body[:600] + " …"
            transcript.say("[bot] " + shown.replace("\n", "\n      "))


def _verdict(
    transcript: Transcript,
    expected: dict[str, tuple[str, tuple[str, ...]]],
    replies: list[dict[str, Any]],
) -> bool:
    by_context: dict[str, list[dict[str, Any]]] = {}
    for reply in replies:
        by_context.setdefault(reply.get("context") or "", []).append(reply)
    ok = True
    print("\nverdict:", flush=True)
    for wamid, (label, must) in expected.items():
        got = by_context.get(wamid, [])
        parts = {
            (json.dumps(r.get("payload", {}).get("text", {}), sort_keys=True), r.get("body"))
            for r in got
        }
        duplicated = len(got) != len(parts)
        missing = not got
        lacking = [m for m in must if not any(m in (r.get("body") or "") for r in got)]
        fine = not (duplicated or missing or lacking)
        ok &= fine
        detail = "missing" if missing else "duplicated" if duplicated else "ok"
        if lacking:
            detail = f"reply lacks {lacking}"
        print(f"  {'✔' if fine else '✘'} {label:<10} {len(got)} message(s): {detail}", flush=True)
    print("\nall replies arrived exactly once" if ok else "\nDEMO FAILED", flush=True)
    return ok
