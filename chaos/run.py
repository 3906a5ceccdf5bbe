"""``onyx-wa chaos``: run scenarios against one rig, print expected vs delivered, fail on loss.

One rig (broker, ingress, worker, simulator, fake Onyx) serves every scenario in turn: starting
a Faust worker costs seconds, and the scenarios that kill or restart parts bring them back
before the next one starts. Results go to ``bench/results/chaos-<time>.json`` with ``--save``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from chaos.rig import ChaosRig
from chaos.scenarios import FULL, SCENARIOS, SHORT, Outcome, Profile, run_scenario


def resolve(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return names or list(SCENARIOS)


async def run_chaos(names: list[str], profile: Profile) -> list[Outcome]:
    chosen = resolve(names)
    rig = ChaosRig()
    print(f"chaos: starting the rig in {rig.data_dir}", flush=True)
    await rig.start()
    outcomes: list[Outcome] = []
    try:
        print(
            f"chaos: {len(chosen)} scenario(s), {profile.rate:g} questions/s for "
            f"{profile.duration_s:g} s each",
            flush=True,
        )
        for name in chosen:
            scenario = SCENARIOS[name]
            print(f"-- {name}: {scenario.summary}", flush=True)
            outcome = await run_scenario(rig, scenario, profile)
            outcomes.append(outcome)
            print(outcome.line(), flush=True)
            if not outcome.passed:
                print(rig.logs(), flush=True)
    finally:
        await rig.stop()
    return outcomes


def main(names: list[str], *, short: bool, as_json: bool, save: bool) -> int:
    import asyncio

    outcomes = asyncio.run(run_chaos(names, SHORT if short else FULL))
    report: dict[str, Any] = {
        "profile": "short" if short else "full",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scenarios": [o.to_dict() for o in outcomes],
        "passed": all(o.passed for o in outcomes),
    }
    if save:
        from bench.runner import RESULTS_DIR

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"chaos-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"results: {path}", flush=True)
    if as_json:
        print(json.dumps(report, indent=2))
    failed = [o.name for o in outcomes if not o.passed]
    print(f"chaos: {len(outcomes) - len(failed)}/{len(outcomes)} passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)  # fmt: skip
    return 1 if failed else 0
