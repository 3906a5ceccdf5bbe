"""``onyx-wa``: the one command that fronts every part of the system.

Why typer: typed options, generated help, sub-commands, no hand-written argument parsing.
Imports of heavy modules happen inside commands so ``onyx-wa --help`` stays instant.
Every expected failure (bad settings, unreachable broker or database, a port in use) ends as one
line on stderr naming the problem and the fix, with a non-zero exit code and no traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from onyx_wa.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="onyx-wa",
    help="WhatsApp bot for Onyx: an event-sourced pipeline on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
bots_app = typer.Typer(help="Tenants' WhatsApp bots.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(bots_app, name="bots")
topics_app = typer.Typer(help="Kafka topics of the pipeline.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
dlq_app = typer.Typer(help="The outbound dead-letter queue.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

F = TypeVar("F", bound=Callable[..., Any])

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (SettingsError,)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: shown as one line, never as a traceback."""
    from onyx_wa.broker import BrokerError
    from onyx_wa.kafka import BrokerUnavailable
    from onyx_wa.runtime import StartupError

    errors: list[type[BaseException]] = [
        SettingsError,
        BrokerError,
        BrokerUnavailable,
        StartupError,
    ]
    from streams.worker import WorkerCrashed

    errors.append(WorkerCrashed)
    try:
        from store.db import DatabaseUnavailable

        errors.append(DatabaseUnavailable)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def friendly(func: F) -> F:
    """Turn expected failures into ``onyx-wa: error: <one line>`` and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except _expected_errors() as exc:
            typer.echo(f"onyx-wa: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno in (98, 48):  # EADDRINUSE on Linux / macOS
                typer.echo(
                    f"onyx-wa: error: a port is already in use ({exc.strerror}): stop the other "
                    f"process or change ONYX_WA_*_PORT",
                    err=True,
                )
                raise typer.Exit(2) from None
            raise

    return wrapper  # type: ignore[return-value]


def settings_from_env(**overrides: Any) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    settings = load_settings(**clean)
    from onyx_wa.logs import configure_logging

    configure_logging(settings)
    return settings


# --- infrastructure -----------------------------------------------------------------------------


@app.command()
@friendly
def broker(
    port: int = typer.Option(None, help="Port (default ONYX_WA_BROKER_PORT or 19092)."),
    create_topics: bool = typer.Option(True, help="Create the pipeline topics once it is up."),
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu) in the foreground."""
    from onyx_wa.runtime import run_service
    from onyx_wa.stack import serve_broker

    settings = settings_from_env(broker_port=port)
    run_service(lambda stop: serve_broker(settings, stop, create_topics=create_topics))


@topics_app.command("create")
@friendly
def topics_create() -> None:
    """Create every pipeline topic with the configured partitions (idempotent)."""
    from onyx_wa.kafka import ensure_pipeline_topics, wait_for_broker

    settings = settings_from_env()

    async def run() -> dict[str, int]:
        await wait_for_broker(settings.bootstrap_servers, timeout_s=10)
        return await ensure_pipeline_topics(settings)

    topics = asyncio.run(run())
    for name, parts in sorted(topics.items()):
        typer.echo(f"{name}\t{parts}")


@topics_app.command("list")
@friendly
def topics_list() -> None:
    """Print the pipeline's topic names under the configured prefix."""
    from onyx_wa.kafka import planned_topics

    for name, parts in sorted(planned_topics(settings_from_env()).items()):
        typer.echo(f"{name}\t{parts}")


@dlq_app.command("replay")
@friendly
def dlq_replay(
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant's messages."),
    code: list[int] = typer.Option([], "--code", help="Only these error codes (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count, send nothing."),
) -> None:
    """Re-send dead-lettered messages (each at most once more, even if run twice)."""
    from ops.dlq import replay_dlq

    settings = settings_from_env()
    summary = asyncio.run(
        replay_dlq(settings, tenant=tenant, codes=set(code) or None, dry_run=dry_run)
    )
    verb = "would replay" if dry_run else "replayed"
    typer.echo(
        f"read {summary.read}, {verb} {summary.replayed}, skipped {summary.skipped}; "
        f"by code {summary.by_code}"
    )


@db_app.command("upgrade")
@friendly
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply Alembic migrations (to head by default)."""
    from store.migrate import upgrade

    settings = settings_from_env()
    _prepare_database(settings)
    upgrade(settings.sqlalchemy_url, revision)
    typer.echo(f"database at {_masked(settings.sqlalchemy_url)} is at {revision}")


@db_app.command("downgrade")
@friendly
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Revert Alembic migrations down to REVISION."""
    from store.migrate import downgrade

    settings = settings_from_env()
    downgrade(settings.sqlalchemy_url, revision)
    typer.echo(f"database downgraded to {revision}")


@db_app.command("current")
@friendly
def db_current() -> None:
    """Print the database's current migration revision."""
    from store.migrate import current

    settings = settings_from_env()
    typer.echo(current(settings.sqlalchemy_url) or "(empty)")


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _prepare_database(settings: Settings) -> None:
    """Make sure the embedded SQLite directory exists and the server answers."""
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    from store.db import check_database

    asyncio.run(check_database(settings.sqlalchemy_url))


# --- bots ---------------------------------------------------------------------------------------


@bots_app.command("add")
@friendly
def bots_add(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id (letters, digits, - _ .)."),
    phone_number_id: str = typer.Option(..., "--phone-number-id"),
    app_secret: str = typer.Option(..., "--app-secret", help="Meta app secret (encrypted)."),
    verify_token: str = typer.Option(..., "--verify-token"),
    access_token: str = typer.Option(..., "--access-token", help="Graph API token (encrypted)."),
    name: str = typer.Option(None, "--name"),
    waba_id: str = typer.Option(None, "--waba-id"),
    display_phone_number: str = typer.Option(None, "--display-phone-number"),
    answer_backend: str = typer.Option("local", "--answer-backend", help="local or onyx."),
    onyx_url: str = typer.Option(None, "--onyx-url"),
    onyx_api_key: str = typer.Option(None, "--onyx-api-key", help="Onyx API key (encrypted)."),
    persona_id: int = typer.Option(None, "--persona-id"),
    throughput: float = typer.Option(80.0, "--throughput", help="Messages per second."),
) -> None:
    """Add a tenant's WhatsApp business number."""
    if answer_backend not in ("local", "onyx"):
        raise SettingsError("--answer-backend must be local or onyx")
    if answer_backend == "onyx" and not (onyx_url and onyx_api_key):
        raise SettingsError("--answer-backend onyx needs --onyx-url and --onyx-api-key")
    from onyx_wa.bots import add_bot

    settings = settings_from_env()
    bot = asyncio.run(
        add_bot(
            settings,
            tenant_id=tenant,
            phone_number_id=phone_number_id,
            app_secret=app_secret,
            verify_token=verify_token,
            access_token=access_token,
            name=name,
            waba_id=waba_id,
            display_phone_number=display_phone_number,
            answer_backend=answer_backend,
            onyx_base_url=onyx_url,
            onyx_api_key=onyx_api_key,
            default_persona_id=persona_id,
            throughput_per_s=throughput,
        )
    )
    typer.echo(f"added bot {bot['id']} for tenant {tenant} (number {phone_number_id})")


@bots_app.command("list")
@friendly
def bots_list(
    tenant: str = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List bots (secrets are never shown)."""
    from onyx_wa.bots import list_bots

    settings = settings_from_env()
    rows = asyncio.run(list_bots(settings, tenant))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo("no bots configured: add one with `onyx-wa bots add`")
        return
    columns = ["id", "tenant_id", "phone_number_id", "name", "enabled", "answer_backend"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    typer.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        typer.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


# --- services -----------------------------------------------------------------------------------


@app.command()
@friendly
def worker(
    role: list[str] = typer.Option(
        ["streams", "answers", "egress", "analytics"],
        "--role",
        help="Stages to run (repeatable): streams, answers, egress, analytics.",
    ),
) -> None:
    """Run a Faust worker for the given roles (all by default)."""
    from onyx_wa.runtime import run_service
    from streams.worker import serve_worker

    settings = settings_from_env()
    run_service(lambda stop: serve_worker(settings, role, stop))


@app.command()
@friendly
def ingress(
    port: int = typer.Option(None, help="Port (default ONYX_WA_INGRESS_PORT, 8080)."),
) -> None:
    """Run the webhook ingress (GET/POST /webhooks/whatsapp)."""
    from onyx_wa.runtime import run_service
    from onyx_wa.stack import serve_ingress

    settings = settings_from_env(ingress_port=port)
    run_service(lambda stop: serve_ingress(settings, stop))


@app.command()
@friendly
def sim(
    port: int = typer.Option(None, help="Port (default ONYX_WA_SIM_PORT, 8090)."),
    onyx_port: int = typer.Option(None, help="Also serve a fake Onyx on this port."),
) -> None:
    """Run the WhatsApp Cloud API simulator (and optionally a fake Onyx)."""
    from onyx_wa.runtime import run_service
    from onyx_wa.stack import serve_sim

    settings = settings_from_env(sim_port=port)
    run_service(lambda stop: serve_sim(settings, stop, onyx_port=onyx_port))


@app.command("admin")
@friendly
def admin_command(
    port: int = typer.Option(None, help="Port (default ONYX_WA_ADMIN_PORT, 8081)."),
    host: str = typer.Option(None, help="Interface (default ONYX_WA_ADMIN_HOST, 127.0.0.1)."),
) -> None:
    """Run the admin API: bots, chat configs, user links, audit log (see /openapi.json)."""
    from admin.app import serve_admin
    from onyx_wa.runtime import run_service

    settings = settings_from_env(admin_port=port, admin_host=host)
    run_service(lambda stop: serve_admin(settings, stop))


@app.command()
@friendly
def up() -> None:
    """Run the whole embedded stack in the foreground; Ctrl-C stops all of it."""
    from onyx_wa.runtime import run_service
    from onyx_wa.stack import serve_stack

    settings = settings_from_env()
    run_service(lambda stop: serve_stack(settings, stop))


@app.command()
@friendly
def demo(
    keep_running: bool = typer.Option(False, help="Leave the stack up after the script."),
) -> None:
    """Start the embedded stack, play a scripted conversation, print the transcript."""
    import os

    from onyx_wa.demo import run_demo

    settings = settings_from_env(log_level=None if "ONYX_WA_LOG_LEVEL" in os.environ else "WARNING")
    ok = asyncio.run(run_demo(settings, keep_running=keep_running))
    raise typer.Exit(0 if ok else 1)


@app.command()
@friendly
def lag(
    group: list[str] = typer.Option([], "--group", help="Consumer group (repeatable)."),
    as_json: bool = typer.Option(False, "--json"),
    watch: bool = typer.Option(False, "--watch", help="Sample repeatedly (full statuses)."),
    interval: float = typer.Option(5.0, "--interval"),
) -> None:
    """Consumer lag per group/topic/partition: messages, seconds and a Burrow-style status."""
    from onyx_wa.kafka import wait_for_broker
    from ops.lag import LagStatus, collect_lag, render_table, watch_lag

    settings = settings_from_env()
    asyncio.run(wait_for_broker(settings.bootstrap_servers, timeout_s=10))

    def show(report: object) -> None:
        typer.echo(report.to_json() if as_json else render_table(report))  # type: ignore[attr-defined]

    if watch:
        asyncio.run(watch_lag(settings, group or None, interval_s=interval, on_report=show))
        return
    report = asyncio.run(collect_lag(settings, group or None))
    show(report)
    if any(g.status >= LagStatus.STALL for g in report.groups):
        raise typer.Exit(1)


@app.command("lag-exporter")
@friendly
def lag_exporter(
    host: str = typer.Option("0.0.0.0", "--host"),  # noqa: S104 - scraped by Prometheus
    port: int = typer.Option(9308, "--port"),
    interval: float = typer.Option(15.0, "--interval"),
    group: list[str] = typer.Option([], "--group"),
) -> None:
    """Serve consumer-lag gauges on /metrics for Prometheus."""
    from onyx_wa.runtime import run_service, wait_stop
    from ops.lag_exporter import run_lag_exporter

    settings = settings_from_env()

    async def serve(stop: asyncio.Event) -> None:
        task = asyncio.ensure_future(
            run_lag_exporter(settings, host, port, interval, group or None)
        )
        try:
            await wait_stop(stop, task)
        finally:
            task.cancel()

    run_service(serve)


@app.command()
@friendly
def replay(
    topic: str = typer.Option(..., "--topic", help="e.g. wa.webhook.raw or wa.inbound"),
    start: str = typer.Option(..., "--from", help="ISO 8601, 'now' or -30m / -2h / -7d"),
    end: str = typer.Option(..., "--to"),
    tenant: str = typer.Option(None, "--tenant"),
    rebuild_state: str = typer.Option(None, "--rebuild-state", help="FILE.json"),
    to_topic: str = typer.Option(None, "--to-topic", help="NAME"),
    export: str = typer.Option(None, "--export", help="FILE.jsonl or FILE.parquet"),
    dry_run: bool = typer.Option(False, "--dry-run"),
) -> None:
    """Reprocess a time range with a fresh consumer (live groups are never moved)."""
    from ops.export import ExportError
    from ops.replay import ReplayError, parse_time
    from ops.replay import replay as run_replay

    chosen = [(m, v) for m, v in (("rebuild_state", rebuild_state), ("to_topic", to_topic),
              ("export", export)) if v]  # fmt: skip
    if len(chosen) != 1:
        raise SettingsError("choose exactly one of --rebuild-state, --to-topic, --export")
    mode, target = chosen[0]
    settings = settings_from_env()
    from onyx_wa.kafka import wait_for_broker

    asyncio.run(wait_for_broker(settings.bootstrap_servers, timeout_s=10))

    def progress(done: int, total: int) -> None:
        typer.echo(f"\r{done}/{total or '?'} records", nl=False, err=True)

    try:
        summary = asyncio.run(
            run_replay(
                settings, topic=topic, start=parse_time(start), end=parse_time(end),
                tenant=tenant, mode=mode, target=target, dry_run=dry_run, progress=progress,
            )
        )  # fmt: skip
    except (ReplayError, ExportError) as exc:
        raise SettingsError(str(exc)) from None
    typer.echo("", err=True)
    typer.echo(json.dumps(summary.to_dict(), indent=2, default=str))


@app.command()
@friendly
def bench(
    name: str = typer.Argument(
        ..., help="codec, format, ingress, streams, answers, egress, e2e or all"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run a benchmark; prints figures beside a baseline measured in the same run."""
    from bench.runner import run_benchmark

    result = run_benchmark(name)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
@friendly
def chaos(
    scenario: list[str] = typer.Argument(
        None, help="Scenarios to run (default all): kill-worker, restart-ingress, ..."
    ),
    short: bool = typer.Option(False, "--short", help="A lighter load (the make test profile)."),
    as_json: bool = typer.Option(False, "--json"),
    save: bool = typer.Option(True, "--save/--no-save", help="Write bench/results/chaos-*.json."),
) -> None:
    """Run chaos scenarios under a steady load; fails unless every reply arrived exactly once."""
    from chaos.run import main as run_chaos

    raise typer.Exit(run_chaos(list(scenario or []), short=short, as_json=as_json, save=save))


def main() -> None:
    """Console-script entry point."""
    logging.captureWarnings(True)
    try:
        app()
    except SystemExit:
        raise
    except BaseException as exc:  # last resort: still one line, but say it is a bug
        if isinstance(exc, KeyboardInterrupt):
            sys.exit(130)
        typer.echo(f"onyx-wa: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
