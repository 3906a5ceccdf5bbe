"""The short chaos subset (``make chaos`` runs them all): a steady load, one fault each.

Three scenarios on one rig of real processes (embedded broker, ingress, worker) with the
simulator and fake Onyx in this process: kill -9 of the worker, a second worker joining and the
first leaving (a rebalance), and every webhook delivered three times. Each must end with every
question answered exactly once: lost 0, duplicated 0, and each checks that its fault really
happened (a new worker process, two workers, duplicates dropped), so a fault that silently
failed to fire cannot pass. The first two lost records to Faust's consumer before
``streams/offset_guard.py`` (docs/reliability.md).
"""

from __future__ import annotations

import pytest

from chaos.rig import ChaosRig
from chaos.scenarios import SCENARIOS, SHORT, SHORT_SET, run_scenario

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
async def rig(tmp_path_factory):
    rig = ChaosRig(data_dir=tmp_path_factory.mktemp("chaos"))
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()


@pytest.mark.parametrize("name", SHORT_SET)
async def test_chaos_scenario_loses_nothing_and_duplicates_nothing(rig, name):
    outcome = await run_scenario(rig, SCENARIOS[name], SHORT)
    print(outcome.line())
    assert outcome.expected > 0
    assert outcome.passed, f"{outcome.line()}\n{rig.logs()}"
    assert outcome.delivered == outcome.expected


def test_an_unanswered_question_fails_the_verdict():
    """The verdict itself: a lost or a doubled reply is a failure."""
    from chaos.scenarios import Outcome

    ok = Outcome("x", expected=3, delivered=3, lost=0, duplicated=0, redeliveries=0, seconds=1)
    assert ok.passed
    assert not Outcome("x", 3, 2, lost=1, duplicated=0, redeliveries=0, seconds=1).passed
    assert not Outcome("x", 3, 3, lost=0, duplicated=1, redeliveries=0, seconds=1).passed
