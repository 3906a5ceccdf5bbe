"""``onyx-wa bench NAME``: run one benchmark module (or all) and return its figures.

Each module in ``bench/`` exposes ``run(**kwargs) -> dict`` that measures the hot path *and* a
baseline in the same run, prints a short table, and returns the figures (medians, ratio).
"""

from __future__ import annotations

import importlib
import inspect
import json
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


def run_benchmark(name: str, *, save: bool = True) -> dict[str, Any]:
    names = available() if name == "all" else [name]
    if name != "all" and name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}, all")
    results: dict[str, Any] = {}
    for bench in names:
        module = importlib.import_module(f"bench.{bench}")
        print(f"== bench {bench}", flush=True)
        outcome = module.run()
        if inspect.isawaitable(outcome):
            import asyncio

            outcome = asyncio.run(outcome)
        results[bench] = outcome
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
