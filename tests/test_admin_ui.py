"""The admin web UI end to end in headless Chromium, against the admin app on a real socket.

Browser: Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``make browser``, which
``make test`` runs) or ``ONYX_WA_CHROMIUM``, driven by playwright without any browser download.
The browser tests skip, saying why, only when no Chromium can be found. Screenshots of every
page go to ``test-artifacts/ui/`` at the repository root and to pytest's tmp dir; their paths
are printed.

Data: SQLite (migrated) with two tenants' bots and chat configs, analytics facts written through
``analytics.store`` with known figures, and a fake lag source injected into the context (the
real collection is tested in tests/test_ops_lag.py).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from admin.app import AdminContext, create_app
from admin.auth import TokenAuth
from admin.lag import ROUTES as LAG_ROUTES
from admin.lag import LagSource
from analytics.api import ROUTES as ANALYTICS_ROUTES
from analytics.facts import FeedbackRow, RequestFact, ResultFact
from analytics.store import FactBatch, write_batch
from onyx_wa.broker import free_port

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
RUN = uuid.uuid4().hex[:8]
OP = f"op-{RUN}-ui-token-aaaaaaaaaa"
ACME = f"acme-{RUN}-ui-token-bbbbbbbb"
GLOBEX = f"globex-{RUN}-ui-token-cccccc"
TOKENS = f"{OP}=operator@olga,{ACME}=tenant:acme@ana,{GLOBEX}=tenant:globex@gus"
FIRST, LAST = "2026-03-01", "2026-03-07"
TIMEOUT_MS = 10_000


def find_chromium() -> str | None:
    """ONYX_WA_CHROMIUM, else Debian's /usr/bin/chromium, else one on PATH."""
    configured = os.environ.get("ONYX_WA_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


# --- seed data ----------------------------------------------------------------------------------


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() * 1000)


# (request id, tenant, user, asked at, question, outcome, latency ms)
QUESTIONS = [
    ("r1", "acme", "u1", "2026-03-02T09:00", "How do I reset my password?", "ok", 200),
    ("r2", "acme", "u2", "2026-03-02T10:00", "Where is the handbook?", "ok", 400),
    ("r3", "acme", "u3", "2026-03-02T11:00", "What is the VPN?", "unanswered", 300),
    ("r4", "acme", "u1", "2026-03-03T09:00", "Who approves expenses?", "ok", 100),
    ("r5", "acme", "u4", "2026-03-03T10:00", "Is the office open?", "failed", 5000),
    ("r6", "acme", "u4", "2026-03-03T11:00", "what is the vpn? ", "unanswered", 300),
    ("r7", "acme", "u1", "2026-03-03T12:00", "Where is the cafeteria?", "unanswered", 500),
    ("r8", "acme", "u5", "2026-03-05T09:00", "Can I work remotely?", None, None),
    ("g1", "globex", "x1", "2026-03-02T09:00", "Globex-only question?", "unanswered", 250),
]
# (feedback id, request id, user, at, positive)
FEEDBACK = [
    ("f1", "r1", "u1", "2026-03-02T09:05", True),
    ("f2", "r2", "u2", "2026-03-02T10:05", True),
    ("f3", "r4", "u1", "2026-03-03T09:05", False),
]
# what the acme dashboard must show for FIRST..LAST (computed by hand from the rows above)
ACME_TOTALS = {
    "questions": "8",
    "answered": "3",
    "unanswered": "3",
    "failed": "1",
    "active_users": "5",
    "median_ms": "300 ms",  # of 100 200 300 300 400 500 (failures excluded)
    "p95_ms": "475 ms",  # percentile_cont: 400 + 0.75 * (500 - 400)
    "feedback_ratio": "67%",  # 2 up, 1 down
}


async def seed_facts(sessions: Any) -> None:
    batch = FactBatch()
    for rid, tenant, user, asked, question, outcome, latency in QUESTIONS:
        asked_ms = ms(asked)
        batch.add(RequestFact(rid, tenant, "1000", f"hash-{user}", asked[:10], asked_ms, question))
        if outcome is not None:
            batch.add(
                ResultFact(
                    rid, tenant, "1000", f"hash-{user}", outcome, asked_ms + latency, latency,
                    "timeout" if outcome == "failed" else None, 1 if outcome == "ok" else 0,
                )
            )  # fmt: skip
    for fid, rid, user, at, positive in FEEDBACK:
        batch.add(
            FeedbackRow(fid, "acme", rid, f"hash-{user}", at[:10], ms(at), positive, "button")
        )
    await write_batch(sessions, batch)


LAG_REPORT = {
    "at": 1_790_000_000.0,
    "groups": [
        {
            "group": "onyx-wa-analytics-answers-egress-streams",
            "status": "OK",
            "lag": 3,
            "lag_seconds": 1.5,
            "error": None,
            "partitions": [
                {"topic": "wa.inbound", "partition": 0, "committed": 120, "end": 123, "lag": 3,
                 "lag_seconds": 1.5, "status": "OK", "error": None},
                {"topic": "wa.inbound", "partition": 1, "committed": 77, "end": 77, "lag": 0,
                 "lag_seconds": 0.0, "status": "OK", "error": None},
            ],
        },
        {
            "group": "onyx-wa-egress",
            "status": "STALL",
            "lag": 42,
            "lag_seconds": 93.5,
            "error": None,
            "partitions": [
                {"topic": "wa.outbound", "partition": 0, "committed": None, "end": 42, "lag": 42,
                 "lag_seconds": 93.5, "status": "STALL", "error": None},
            ],
        },
    ],
}  # fmt: skip


@dataclass
class FakeLag:
    report: dict[str, Any]
    calls: list[list[str] | None] = field(default_factory=list)
    fail: bool = False

    async def __call__(self, groups: list[str] | None) -> dict[str, Any]:
        self.calls.append(groups)
        if self.fail:
            raise ConnectionError("no broker")
        return self.report


@dataclass
class Server:
    base: str
    bots: dict[str, dict[str, Any]]
    lag: FakeLag
    secrets: list[str] = field(default_factory=list)

    def secret(self, name: str) -> str:
        value = f"{name}-SECRET-{uuid.uuid4().hex}"
        self.secrets.append(value)
        return value


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    from cryptography.fernet import Fernet

    from store.crypto import SecretBox
    from store.db import make_engine, session_factory
    from store.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ui-db') / 'admin.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    await seed_facts(sessions)
    lag = FakeLag(LAG_REPORT)
    context = AdminContext(
        sessions=sessions,
        box=SecretBox(Fernet.generate_key().decode()),
        auth=TokenAuth.from_setting(TOKENS),
        lag_source=lag,
    )
    app = create_app(context, extra_routes=(*ANALYTICS_ROUTES, *LAG_ROUTES))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    srv = Server(base=base, bots={}, lag=lag)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {OP}"}
            for key, tenant, pnid, name in (
                ("acme1", "acme", "5550001", "Acme support"),
                ("acme2", "acme", "5550002", "Acme sales"),
                ("globex", "globex", "5550003", "Globex helpdesk"),
            ):
                body = {
                    "tenant_id": tenant,
                    "phone_number_id": pnid,
                    "name": name,
                    "access_token": srv.secret("access"),
                    "app_secret": srv.secret("app"),
                    "verify_token": srv.secret("verify"),
                }
                async with http.post(f"{base}/api/v1/bots", json=body, headers=headers) as r:
                    assert r.status == 201, await r.text()
                    srv.bots[key] = await r.json()
            bot = srv.bots["acme1"]["id"]
            config = {"match_kind": "default", "document_sets": ["Handbook"]}
            async with http.post(
                f"{base}/api/v1/bots/{bot}/chat-configs", json=config, headers=headers
            ) as r:
                assert r.status == 201, await r.text()
        yield srv
    finally:
        await runner.cleanup()
        await engine.dispose()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found (looked for ONYX_WA_CHROMIUM, /usr/bin/chromium and chromium on "
            "PATH): run `make browser` (Debian: apt-get install chromium) to run the UI tests"
        )
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console", lambda msg: errors.append(msg.text) if msg.type == "error" else None
    )  # a CSP violation or a failed module load shows up here
    try:
        yield page
    finally:
        await context.close()
    # the API's refusals the tests provoke (401, 404 of another tenant's bot, 503) are logged
    # by the browser as failed loads; anything else (a script error, a CSP violation) fails
    unexpected = [e for e in errors if "the server responded with a status of" not in e]
    assert not unexpected, f"browser errors: {unexpected}"


@pytest.fixture
def shots(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Any:
    """``await shot(page, name)`` saves a full-page screenshot; the paths are printed at the end."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []

    async def shot(page: Page, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        shutil.copyfile(path, tmp_path / path.name)
        saved.append(path)
        return path

    yield shot
    if saved:
        request.node.user_properties.append(("screenshots", [str(p) for p in saved]))
        with capsys.disabled():
            print(f"\n[{request.node.name}] screenshots:")
            for path in saved:
                print(f"  {path}  (copy: {tmp_path / path.name})")


async def ready(page: Page, name: str) -> None:
    await page.wait_for_selector(f'#page[data-page="{name}"][data-ready="true"]')


async def login(page: Page, base: str, token: str, path: str = "") -> None:
    await page.goto(f"{base}/ui/{path}")
    await page.fill("#token", token)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#nav:not([hidden])")


async def rows(page: Page, selector: str) -> list[str]:
    return [t.strip() for t in await page.locator(selector).all_inner_texts()]


# --- static serving (no browser) ----------------------------------------------------------------


async def test_ui_is_served_self_contained_with_a_strict_policy(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base}/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/ui/"
        async with http.get(f"{server.base}/ui/") as r:
            html = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"
        # no CDN: every script, stylesheet and image is a path on this server
        for url in re.findall(r'(?:src|href)="([^"#]+)"', html):
            assert url.startswith("/ui/"), url
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with http.get(f"{server.base}/ui/{name}") as r:
                assert r.status == 200 and r.content_type == kind, name
                assert "http://" not in await r.text() and "https://" not in await r.text()
        for bad in ("nope.js", "..%2Fapp.py", "%2e%2e/ui.py", "app.py"):
            async with http.get(f"{server.base}/ui/{bad}") as r:
                assert r.status == 404, bad
        # the UI is public, the API is not
        async with http.get(f"{server.base}/api/v1/lag") as r:
            assert r.status == 401


async def test_lag_route_is_operator_only_and_documented(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{server.base}/api/v1/lag", headers={"Authorization": f"Bearer {OP}"}
        ) as r:
            assert r.status == 200
            assert await r.json() == LAG_REPORT
        async with http.get(
            f"{server.base}/api/v1/lag?group=onyx-wa-egress",
            headers={"Authorization": f"Bearer {OP}"},
        ) as r:
            assert r.status == 200
        assert server.lag.calls[-1] == ["onyx-wa-egress"]
        async with http.get(
            f"{server.base}/api/v1/lag", headers={"Authorization": f"Bearer {ACME}"}
        ) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "forbidden"
        server.lag.fail = True
        try:
            async with http.get(
                f"{server.base}/api/v1/lag", headers={"Authorization": f"Bearer {OP}"}
            ) as r:
                assert r.status == 503
                assert (await r.json())["error"]["code"] == "kafka_unavailable"
        finally:
            server.lag.fail = False
        async with http.get(f"{server.base}/openapi.json") as r:
            document = await r.json()
    operation = document["paths"]["/api/v1/lag"]["get"]
    assert operation["operationId"] == "getLag"
    assert {"200", "401", "403", "503"} <= set(operation["responses"])
    from openapi_spec_validator import validate

    validate(document)


async def test_lag_source_keeps_one_evaluator_and_shares_a_collection(monkeypatch) -> None:
    import ops.lag
    from ops.lag import LagReport

    seen: list[tuple[Any, Any]] = []

    async def fake_collect(settings: Any, groups: Any, *, evaluator: Any) -> LagReport:
        seen.append((groups, evaluator))
        return LagReport(at=float(len(seen)))

    monkeypatch.setattr(ops.lag, "collect_lag", fake_collect)
    source = LagSource(settings=object(), min_interval_s=60)
    assert (await source(None))["at"] == 1.0
    assert (await source(None))["at"] == 1.0  # within the interval: the same collection
    assert (await source(["g"]))["at"] == 2.0  # other groups: collected
    assert seen[0][1] is seen[1][1]  # one evaluator across calls (WARN/STALL need a window)


# --- in the browser ---------------------------------------------------------------------------


async def test_operator_manages_bots_secrets_and_chat_configs(
    server: Server, page: Page, shots: Any
) -> None:
    await page.goto(f"{server.base}/ui/")
    await page.wait_for_selector("#login:not([hidden])")
    await page.fill("#token", "not-a-valid-token-at-all")
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#login-error:not([hidden])")
    assert "not valid" in await page.inner_text("#login-error")
    await shots(page, "01-login")

    await page.fill("#token", OP)
    await page.click("#login-form button[type=submit]")
    await ready(page, "bots")
    assert await page.inner_text("#who-label") == "olga · operator"
    names = await rows(page, "#bots tbody .bot-name")
    assert {"Acme support", "Acme sales", "Globex helpdesk"} <= set(names)
    assert await page.is_visible("nav a[data-nav=lag]")

    # add a bot (secrets typed into password fields, never shown again)
    await page.click("#add-bot-card summary")
    new = {name: server.secret(name) for name in ("access_token", "app_secret", "verify_token")}
    await page.fill("#add-bot [name=tenant_id]", "acme")
    await page.fill("#add-bot [name=phone_number_id]", "5550099")
    await page.fill("#add-bot [name=name]", "Acme night shift")
    for name, value in new.items():
        await page.fill(f"#add-bot [name={name}]", value)
    await page.click("#add-bot button[type=submit]")
    row = page.locator("#bots tbody tr", has_text="Acme night shift")
    await row.wait_for()
    assert await row.locator(".status").inner_text() == "enabled"
    assert await row.locator("[data-secret=access_token]").get_attribute("data-set") == "true"
    assert "Bot Acme night shift" in await page.inner_text("#toast")

    # disable it
    await row.locator("[data-action=toggle]").click()
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#bots tbody tr')].some(r =>"
        " r.textContent.includes('Acme night shift') && r.textContent.includes('disabled'))"
    )
    row = page.locator("#bots tbody tr", has_text="Acme night shift")
    assert await row.locator("[data-action=toggle]").inner_text() == "Enable"
    await shots(page, "02-bots")

    # rotate a secret in the dialog
    rotated = server.secret("rotated")
    await row.locator("[data-action=rotate]").click()
    await page.select_option("#rotate-dialog select[name=secret]", "app_secret")
    await page.fill("#rotate-dialog [name=value]", rotated)
    await shots(page, "03-rotate-secret")
    await page.click("#rotate-dialog button[type=submit]")
    await page.wait_for_selector("#rotate-dialog", state="detached")
    assert "app secret of Acme night shift replaced" in await page.inner_text("#toast")

    # no secret is anywhere in the page: not in the HTML, not in any input's value
    html = await page.content()
    values = await page.eval_on_selector_all("input, textarea", "els => els.map(e => e.value)")
    for secret in [*server.secrets, *new.values(), rotated, OP]:
        assert secret not in html, "a secret value is in the page HTML"
        assert secret not in values, "a secret value stayed in an input"
    stored = await page.evaluate("() => JSON.stringify(sessionStorage)")
    assert rotated not in stored and OP in stored  # only the token, only in this tab

    # chat configs of the first bot: one seeded, add one, edit it
    bot = server.bots["acme1"]
    await page.click(f'#bots a.bot-name[href="#/bots/{bot["id"]}"]')
    await ready(page, "bot")
    assert len(await rows(page, "#chat-configs tbody tr")) == 1
    await page.click("#add-config-card summary")
    await page.select_option("#add-config [name=match_kind]", "group")
    await page.fill("#add-config [name=match_value]", "120363025246125486")
    await page.fill("#add-config [name=document_sets]", "Policies, IT")
    await page.check("#add-config [name=respond_tag_only]")
    await page.click("#add-config button[type=submit]")
    added = page.locator("#chat-configs tbody tr", has_text="120363025246125486")
    await added.wait_for()
    assert "Policies, IT" in await added.inner_text()
    assert "everyone" in await added.inner_text()

    config_id = await added.get_attribute("data-config-id")
    await added.locator("[data-action=edit]").click()
    form = f"#edit-config-{config_id}"
    assert await page.is_disabled(f"{form} [name=match_kind]")  # the match is fixed
    await page.fill(f"{form} [name=allowed_senders]", "15550101, 15550102")
    await page.fill(f"{form} [name=persona_id]", "7")
    await page.click(f"{form} button[type=submit]")
    await page.wait_for_function(
        f"() => document.querySelector('#chat-configs tr[data-config-id=\"{config_id}\"]')"
        "?.textContent.includes('15550101, 15550102')"
    )
    edited = page.locator(f'#chat-configs tr[data-config-id="{config_id}"]')
    assert "7" in await edited.locator("td").nth(3).inner_text()
    await shots(page, "04-chat-configs")

    # delete it (two clicks: no native dialog)
    await edited.locator("[data-action=delete]").click()
    await edited.locator("[data-action=delete]", has_text="Really delete?").click()
    await page.wait_for_selector(
        f'#chat-configs tr[data-config-id="{config_id}"]', state="detached"
    )
    assert len(await rows(page, "#chat-configs tbody tr")) == 1


async def test_analytics_dashboard_draws_the_seeded_figures(
    server: Server, page: Page, shots: Any
) -> None:
    await login(page, server.base, OP, "#/analytics")
    await ready(page, "analytics")
    # choose the tenant and the range with the controls
    await page.fill("#an-tenant", "acme")
    await page.fill("#an-from", FIRST)
    await page.fill("#an-to", LAST)
    await page.click("#analytics-range button[type=submit]")
    await page.wait_for_function(
        "() => document.querySelector('#page').dataset.tenant === 'acme'"
        " && document.querySelector('#page').dataset.ready === 'true'"
    )
    assert f"{FIRST} to {LAST}" in await page.inner_text(".range")
    for key, text in ACME_TOTALS.items():
        assert await page.inner_text(f'[data-kpi="{key}"] .kpi-value') == text, key
    assert "2 helpful · 1 not helpful" in await page.inner_text('[data-kpi="feedback_ratio"]')

    async def value(chart: str, day: str, series: str) -> float:
        found = page.locator(f'[data-chart="{chart}"] [data-day="{day}"][data-series="{series}"]')
        return float(await found.get_attribute("data-value"))

    # questions per day by outcome: one bar per day and series, totals as seeded
    assert await page.locator('[data-chart="questions"] rect.bar').count() == 7 * 4
    assert await page.get_attribute('[data-chart="questions"]', "data-total") == "8"
    assert [await value("questions", "2026-03-02", s) for s in ("answered", "unanswered")] == [
        2,
        1,
    ]
    assert await value("questions", "2026-03-03", "failed") == 1
    assert await value("questions", "2026-03-05", "pending") == 1
    assert await value("questions", "2026-03-04", "answered") == 0
    # latency: median and p95 points on the days with answers only
    assert await value("latency", "2026-03-02", "median") == 300
    assert await value("latency", "2026-03-03", "p95") == pytest.approx(480)
    assert await page.locator('[data-chart="latency"] [data-day="2026-03-04"]').count() == 0
    assert await page.locator('[data-chart="latency"] path.line').count() == 2
    # feedback and active users
    assert await value("feedback", "2026-03-02", "up") == 2
    assert await value("feedback", "2026-03-03", "down") == 1
    assert "67% positive" in await page.inner_text('[data-chart="feedback"] figcaption')
    assert await value("active-users", "2026-03-02", "users") == 3
    assert await value("active-users", "2026-03-03", "users") == 2
    # top unanswered, grouped case- and space-insensitively; another tenant's never shown
    top = await rows(page, "#top-unanswered tbody tr")
    assert top[0].split("\t")[1:3] == ["What is the VPN?", "2"]
    assert "Where is the cafeteria?" in top[1]
    assert "Globex-only" not in await page.content()
    await shots(page, "05-analytics")

    # a range with nothing in it: empty states, no broken charts
    await page.fill("#an-from", "2026-01-01")
    await page.fill("#an-to", "2026-01-31")
    await page.click("#analytics-range button[type=submit]")
    await page.wait_for_selector('[data-chart="questions"].empty')
    assert await page.inner_text('[data-kpi="questions"] .kpi-value') == "0"


async def test_tenant_admin_sees_only_their_tenant(server: Server, page: Page, shots: Any) -> None:
    await login(page, server.base, ACME)
    await ready(page, "bots")
    assert await page.inner_text("#who-label") == "ana · tenant acme"
    tenants = await page.eval_on_selector_all(
        "#bots tbody tr", "rs => rs.map(r => r.dataset.tenant)"
    )
    assert tenants and set(tenants) == {"acme"}
    assert "Globex helpdesk" not in await page.content()
    assert not await page.is_visible("nav a[data-nav=lag]")
    assert await page.is_disabled("#add-bot [name=tenant_id]")
    await shots(page, "06-tenant-bots")

    # another tenant's bot by its address: the API's 404, no data
    await page.goto(f"{server.base}/ui/#/bots/{server.bots['globex']['id']}")
    await ready(page, "bot")
    assert "no bot with id" in await page.inner_text(".error-box")

    # analytics: fixed to acme
    await page.goto(f"{server.base}/ui/#/analytics?from={FIRST}&to={LAST}&tenant=globex")
    await ready(page, "analytics")
    assert await page.is_disabled("#an-tenant")
    assert await page.input_value("#an-tenant") == "acme"
    assert await page.inner_text('[data-kpi="questions"] .kpi-value') == "8"
    assert "Globex-only" not in await page.content()

    # the lag page says why not
    await page.goto(f"{server.base}/ui/#/lag")
    await ready(page, "lag")
    assert "operators only" in await page.inner_text("#lag-forbidden")


async def test_lag_page_shows_offsets_and_status(server: Server, page: Page, shots: Any) -> None:
    await login(page, server.base, OP, "#/lag")
    await ready(page, "lag")
    await page.wait_for_selector("#lag-table")
    groups = await page.eval_on_selector_all(
        "#lag-table tr.group-row", "rs => rs.map(r => [r.dataset.group, r.dataset.status])"
    )
    assert groups == [
        ["onyx-wa-analytics-answers-egress-streams", "OK"],
        ["onyx-wa-egress", "STALL"],
    ]
    stalled = page.locator('tr.partition-row[data-group="onyx-wa-egress"]')
    assert await stalled.locator('[data-field="committed"]').inner_text() == "–"
    assert await stalled.locator('[data-field="end"]').inner_text() == "42"
    assert await stalled.locator('[data-field="lag"]').inner_text() == "42"
    assert await stalled.locator('[data-field="lag_seconds"]').inner_text() == "1.6 min"
    inbound = page.locator('tr.partition-row[data-topic="wa.inbound"][data-partition="0"]')
    assert await inbound.locator('[data-field="committed"]').inner_text() == "120"
    assert await page.inner_text('[data-kpi="lag"] .kpi-value') == "45"
    assert await page.inner_text('[data-kpi="unhealthy"] .kpi-value') == "1"
    assert "2026-09-21" in await page.inner_text("#lag-at")
    await shots(page, "07-lag")

    calls = len(server.lag.calls)
    await page.click("#lag-refresh")
    for _ in range(50):
        if len(server.lag.calls) > calls:
            break
        await page.wait_for_timeout(50)
    assert len(server.lag.calls) == calls + 1

    # the broker is down: the API's message, not a blank page
    server.lag.fail = True
    try:
        await page.click("#lag-refresh")
        await page.wait_for_selector('#lag-body .error-box[data-code="kafka_unavailable"]')
    finally:
        server.lag.fail = False
    await shots(page, "08-lag-broker-down")
