"""``onyx-wa bench NAME``: run one benchmark module (or all) and return its figures.

Each module in ``bench/`` exposes ``run(**kwargs) -> dict`` that measures the hot path *and* a
baseline in the same run, prints a short table, and returns the figures (medians, ratio).

``all`` runs each benchmark in a fresh interpreter (``python -m bench.runner NAME OUT``), so it
measures each one exactly as ``onyx-wa bench NAME`` does: the answers, egress and e2e
benchmarks run workers in-process, and an earlier benchmark's threads, event loops and heap
must not weigh on a later one (or on its baseline).
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHMARKS = ("codec", "format", "ingress", "streams", "answers", "egress", "e2e")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def available() -> list[str]:
    found = []
    for name in BENCHMARKS:
        try:
            importlib.import_module(f"bench.{name}")
        except ImportError:
            continue
        found.append(name)
    return found


def _run_here(bench: str) -> dict[str, Any]:
    module = importlib.import_module(f"bench.{bench}")
    print(f"== bench {bench}", flush=True)
    outcome = module.run()
    if inspect.isawaitable(outcome):
        import asyncio

        outcome = asyncio.run(outcome)
    return outcome


def _run_isolated(bench: str) -> dict[str, Any]:
    """``bench`` in its own interpreter; its figures come back through a JSON file."""
    with tempfile.TemporaryDirectory(prefix="onyx-wa-bench-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", "bench.runner", bench, str(out)]
        code = subprocess.run(argv, check=False).returncode  # noqa: S603
        if code != 0 or not out.exists():
            raise SystemExit(f"bench {bench} failed (exit code {code})")
        return json.loads(out.read_text())


def run_benchmark(name: str, *, save: bool = True) -> dict[str, Any]:
    names = available() if name == "all" else [name]
    if name != "all" and name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}, all")
    results: dict[str, Any] = {}
    for bench in names:
        results[bench] = _run_isolated(bench) if name == "all" else _run_here(bench)
    if save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = RESULTS_DIR / f"{name}-{stamp}.json"
        path.write_text(json.dumps(results, indent=2, default=str))
        if name == "all":
            from bench.report import write_report

            doc = write_report(results, str(path.relative_to(RESULTS_DIR.parent.parent)))
            print(f"results: {path}; table: {doc}", flush=True)
    return results if name == "all" else results[name]


if __name__ == "__main__":  # pragma: no cover - the child of ``bench all``
    _bench, _out = sys.argv[1:3]
    Path(_out).write_text(json.dumps(_run_here(_bench), default=str))
