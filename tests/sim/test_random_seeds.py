"""Random runs of the simulated cluster: 500 seeds, each a schedule of faults and client operations.

Each seed forms a cluster, runs a few simulated seconds of faults, writes and
reads (tests/sim/chaos.py), heals, and must settle with every invariant kept
(tests/sim/checker.py). A failing seed names the command that replays it with
a trace of every event.
"""

import pytest

from tests.sim.chaos import run_seed
from tests.sim.run import replay_command

SEEDS = range(1, 501)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_run_keeps_the_invariants_and_recovers(seed):
    try:
        run_seed(seed)
    except Exception as exc:  # an invariant, liveness, or the core itself failing: all need the replay
        pytest.fail("seed %d: %s: %s\nreplay: %s" % (seed, type(exc).__name__, exc, replay_command(seed)),
                    pytrace=False)
