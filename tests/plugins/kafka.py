"""The ``kafka`` fixture: one broker per test session, a fresh topic prefix per test.

Which broker, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else Apache Kafka (KRaft) in
testcontainers if a Docker engine answers; else the embedded Tansu broker. The pytest header says
which one ran. The broker is session-scoped (starting one costs seconds); isolation comes from a
unique topic prefix and unique consumer group ids per test, never from leftovers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from onyx_wa.broker import EmbeddedBroker, free_port
from onyx_wa.kafka import ensure_pipeline_topics, ensure_topics
from onyx_wa.settings import Settings, load_settings

KAFKA_IMAGE = "apache/kafka:3.9.1"


@dataclass
class BrokerTarget:
    """Where the session's broker is and what it is."""

    bootstrap_servers: str
    kind: str  # "external" | "testcontainers" | "embedded"

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"


@dataclass
class KafkaForTest:
    """What a test gets: the broker plus its own topic prefix and settings factory."""

    target: BrokerTarget
    prefix: str

    @property
    def bootstrap_servers(self) -> str:
        return self.target.bootstrap_servers

    @property
    def embedded(self) -> bool:
        return self.target.embedded

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at the session broker with this test's topic prefix."""
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap_servers,
            "topic_prefix": self.prefix,
            "partitions": 4,
            "kafka_session_timeout_s": 6.0,
            "broker_flavor": "tansu" if self.embedded else "kafka",
        }
        values.update(overrides)
        return load_settings(**values)

    def group(self, name: str) -> str:
        """A consumer group id private to this test."""
        return f"{self.prefix}.{name}"

    async def create_pipeline_topics(self, settings: Settings | None = None) -> dict[str, int]:
        return await ensure_pipeline_topics(settings or self.settings())

    async def create_topics(self, topics: dict[str, int]) -> None:
        await ensure_topics(self.bootstrap_servers, topics)

    def faust_app(self, app_id: str, **conf: Any) -> Any:
        """A stock Faust app on this broker (the embedded broker's fix-ups applied), without
        this project's guards: a test installs what it is about."""
        import faust

        from onyx_wa.kafka import faust_broker_settings, patch_faust_for_tansu

        if self.embedded:
            patch_faust_for_tansu()
        return faust.App(
            app_id,
            **faust_broker_settings(self.settings()),
            web_enabled=False,
            autodiscover=False,
            **conf,
        )


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:  # DockerException, missing package, refused socket: no engine
        return False


def _describe() -> str:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return f"kafka: external broker at {os.environ['KAFKA_BOOTSTRAP_SERVERS']}"
    if _docker_engine_answers():
        return f"kafka: testcontainers {KAFKA_IMAGE} (KRaft), embedded broker as fallback"
    return "kafka: embedded Tansu broker (no KAFKA_BOOTSTRAP_SERVERS, no Docker engine)"


def pytest_report_header(config: pytest.Config) -> str:
    return _describe()


@pytest.fixture(scope="session")
def kafka_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerTarget]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield BrokerTarget(external, "external")
        return
    if _docker_engine_answers():
        try:
            from docker.errors import DockerException
            from testcontainers.kafka import KafkaContainer

            container = KafkaContainer(KAFKA_IMAGE).with_kraft()
            try:
                container.start()
            except DockerException:
                container = None
            if container is not None:
                try:
                    yield BrokerTarget(container.get_bootstrap_server(), "testcontainers")
                finally:
                    container.stop()
                return
        except ImportError:
            pass
    broker = EmbeddedBroker(
        port=free_port(), log_path=tmp_path_factory.mktemp("broker") / "tansu.log"
    )
    broker.start_blocking()
    try:
        yield BrokerTarget(broker.bootstrap_servers, "embedded")
    finally:
        broker.stop()


@pytest.fixture
async def kafka(kafka_target: BrokerTarget) -> AsyncIterator[KafkaForTest]:
    """The session broker with a topic prefix no other test uses."""
    yield KafkaForTest(kafka_target, prefix=f"t{uuid.uuid4().hex[:10]}")
