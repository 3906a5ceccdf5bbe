"""docker-compose.kafka.yml cannot run here (no Docker engine): keep it correct by parsing it."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from onyx_wa.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())


def _cli_paths() -> set[tuple[str, ...]]:
    root = get_command(app)
    paths: set[tuple[str, ...]] = set()
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        paths.add((name,))
        for sub in getattr(cmd, "commands", {}):
            paths.add((name, sub))
    return paths


def test_kafka_is_apache_kafka_in_kraft_mode():
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not any("ZOOKEEPER" in key for key in env)
    assert "zookeeper" not in COMPOSE["services"]
    # producers must not auto-create topics with the wrong partition count
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_services_reach_kafka_and_postgres_by_their_service_names():
    app_env = COMPOSE["x-app"]["environment"]
    host, port = app_env["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert host in COMPOSE["services"]
    assert (
        f"PLAINTEXT://{host}:{port}"
        in COMPOSE["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )
    assert app_env["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in app_env["DATABASE_URL"]
    assert COMPOSE["services"]["postgres"]["image"].startswith("postgres:")


def test_every_service_command_exists_in_the_cli():
    paths = _cli_paths()
    for name, service in COMPOSE["services"].items():
        command = service.get("command")
        if not command:
            continue
        assert command[0] == "onyx-wa", name
        args = tuple(command[1:])
        assert args[:2] in paths or args[:1] in paths, f"{name}: {' '.join(command)}"


def test_the_image_the_services_build_exists():
    assert (ROOT / "Dockerfile").is_file()
    assert COMPOSE["x-app"]["build"] == "."


def test_encryption_key_is_required_not_defaulted():
    key = COMPOSE["x-app"]["environment"]["ONYX_WA_ENCRYPTION_KEY"]
    assert key.startswith("${ONYX_WA_ENCRYPTION_KEY:?")
