"""Shared pytest set-up: the ``kafka`` and ``db`` fixtures live in ``tests/plugins``."""

pytest_plugins = ["tests.plugins.kafka", "tests.plugins.db"]
