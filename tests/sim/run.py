"""Replay random runs of the simulated cluster: `python -m tests.sim.run --seed 1234 --verbose`.

With --verbose every event of the run is printed (deliveries, actions, client
operations, faults), which is how a failing seed from tests/sim/test_random_seeds.py
is studied. --seeds A-B runs a range and reports the failures.
"""

import argparse
import logging
import sys
import time

from .chaos import run_seed
from .checker import InvariantViolation
from .cluster import LivenessFailure


def replay_command(seed: int) -> str:
    """The one command that replays `seed` with a trace."""
    return "python -m tests.sim.run --seed %d --verbose" % seed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int, help="the seed to replay")
    group.add_argument("--seeds", help="a range of seeds, A-B (inclusive)")
    parser.add_argument("--verbose", action="store_true", help="print every event of the run")
    args = parser.parse_args(argv)
    if args.seed is not None:
        seeds = [args.seed]
    else:
        first, last = (int(s) for s in args.seeds.split("-"))
        seeds = range(first, last + 1)
    # The core logs its decisions; in a trace they belong with the events, otherwise nowhere.
    logging.basicConfig(format="           core: %(message)s", stream=sys.stdout,
                        level=logging.INFO if args.verbose else logging.CRITICAL)
    failures = 0
    started = time.perf_counter()
    for seed in seeds:
        try:
            sim = run_seed(seed, trace=print if args.verbose else None)
        except (InvariantViolation, LivenessFailure) as exc:
            failures += 1
            print("seed %d FAILED: %s: %s\n  replay: %s" % (seed, type(exc).__name__, exc, replay_command(seed)))
            continue
        if args.seed is not None or args.verbose:
            acked = sum(w.status == "acked" for w in sim.writes)
            print("seed %d ok: %d nodes started, %d writes acknowledged of %d proposed, %d reads served, "
                  "%.1f simulated seconds" % (seed, len(sim.nodes) + len(sim.dead), acked, len(sim.writes), len(sim.checker.reads),
                                              sim.now))
    print("%d seeds, %d failed, %.1fs" % (len(seeds), failures, time.perf_counter() - started))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
