"""Settings and figures shared by the fault-injection scenarios.

The same tests run in two sizes. The short variant (the default) is part of
the normal test suite; the long variant is what `scripts/faults.py` runs for
docs/reliability.md, by setting:

- GEOMYS_FAULT_TRIALS: repetitions of the scenarios that take a number of
  trials (default 1 here; 20 in the long run);
- GEOMYS_FAULT_SOAK_SECONDS: length of the random-fault soak (default 20);
- GEOMYS_FAULT_PARTITION_SECONDS: length of the run of repeated network
  partitions (default 15);
- GEOMYS_FAULT_FIGURES: a file each scenario appends its figures to, one JSON
  object a line (unset: figures are not kept).

A scenario that saw too little load before its fault proves nothing, so it
fails as vacuous (`require_load`) rather than passing.
"""

import json
import os
import time
from typing import Optional

import pytest

from tests.faults.partition import PartitionUnavailable, ensure_nft

#: Acknowledged writes a scenario needs before its fault; below, it is vacuous.
MIN_ACKED_BEFORE_FAULT = 1000


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


class FaultSettings:
    """How big this run is (short by default, long under scripts/faults.py)."""

    def __init__(self) -> None:
        self.trials = int(_env_number("GEOMYS_FAULT_TRIALS", 1))
        self.soak_seconds = _env_number("GEOMYS_FAULT_SOAK_SECONDS", 20)
        self.partition_seconds = _env_number("GEOMYS_FAULT_PARTITION_SECONDS", 15)
        self.long = self.trials > 1


class Figures:
    """Collects one scenario's measured figures and appends them to GEOMYS_FAULT_FIGURES."""

    def __init__(self, scenario: str, path: Optional[str]) -> None:
        self.scenario = scenario
        self.path = path
        self.values: dict = {}
        self.started = time.monotonic()

    def add(self, **values) -> None:
        """Record figures; a name given twice accumulates into a list (one item per trial)."""
        for name, value in values.items():
            if name in self.values:
                previous = self.values[name]
                self.values[name] = (previous if isinstance(previous, list) else [previous]) + [value]
            else:
                self.values[name] = value

    def write(self, passed: bool) -> None:
        if not self.path:
            return
        line = {"scenario": self.scenario, "passed": passed,
                "seconds": round(time.monotonic() - self.started, 1), **self.values}
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line, sort_keys=True) + "\n")


def require_load(acked: int, minimum: int = MIN_ACKED_BEFORE_FAULT, what: str = "acknowledged writes") -> None:
    """Fail the scenario as vacuous when the load before its fault was too small to prove anything."""
    if acked < minimum:
        pytest.fail("vacuous: only %d %s before the fault (need %d)" % (acked, what, minimum))


@pytest.fixture(scope="session")
def settings() -> FaultSettings:
    return FaultSettings()


@pytest.fixture(scope="session")
def nftables() -> None:
    """nft installed and working (tests/faults/partition.py), or the test is skipped with the reason."""
    try:
        ensure_nft()
    except PartitionUnavailable as exc:
        pytest.skip("no network partitions here: %s" % exc)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.fault_passed = report.passed


@pytest.fixture
def figures(request):
    """Figures of this scenario, written out after the test with whether it passed."""
    collected = Figures(request.node.name, os.environ.get("GEOMYS_FAULT_FIGURES"))
    yield collected
    collected.write(getattr(request.node, "fault_passed", False))
