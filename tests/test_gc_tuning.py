"""The worker's collector settings (onyx_wa/gc_tuning.py): checked in a fresh interpreter, so
the test process's own collector is left as it is."""

from __future__ import annotations

import json
import subprocess
import sys

from onyx_wa.settings import load_settings

PROBE = """
import gc, json, sys
from onyx_wa.gc_tuning import tune_gc
kept = [[i] for i in range(1000)]  # containers alive at the freeze
before = gc.get_threshold()
changed = tune_gc(int(sys.argv[1]))
print(json.dumps({"changed": changed, "before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count()}))
"""


def _probe(threshold: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    result = _probe(20_000)
    assert result["changed"] is True
    assert result["after"][0] == 20_000
    assert result["after"][1:] == result["before"][1:]  # older generations as Python set them
    assert result["frozen"] >= 1000  # at least the containers alive at the freeze


def test_zero_leaves_the_collector_as_python_set_it() -> None:
    result = _probe(0)
    assert result == {**result, "changed": False, "frozen": 0}
    assert result["after"] == result["before"]


def test_workers_tune_the_collector_by_default() -> None:
    assert load_settings().gc_young_threshold == 20_000
    assert load_settings(gc_young_threshold=0).gc_young_threshold == 0


def test_serve_worker_tunes_the_collector_once_started(monkeypatch) -> None:
    """The wiring: after the worker started (its app built), before it runs."""
    import asyncio

    import streams.worker as worker_module

    events: list[str] = []

    class StartedWorker:
        roles = ("egress",)

        def __init__(self, settings, roles) -> None:
            pass

        async def start(self, web_port=None) -> None:
            events.append("start")

        async def run_until(self, stop) -> None:
            events.append("run")

        async def stop(self) -> None:
            events.append("stop")

    monkeypatch.setattr(worker_module, "Worker", StartedWorker)
    monkeypatch.setattr(worker_module, "tune_gc", lambda n: events.append(f"tune_gc {n}"))
    settings = load_settings(gc_young_threshold=12_345)
    asyncio.run(worker_module.serve_worker(settings, ["egress"], asyncio.Event()))
    assert events == ["start", "tune_gc 12345", "run", "stop"]
