#!/usr/bin/env python3
"""The long variant of the fault-injection suite, its figures written into docs/reliability.md.

Runs `python -m pytest tests/faults -q` with GEOMYS_FAULT_TRIALS,
GEOMYS_FAULT_SOAK_SECONDS, GEOMYS_FAULT_PARTITION_SECONDS and
GEOMYS_FAULT_FIGURES set (tests/faults/conftest.py explains them). Every
scenario appends its figures to that file as one JSON line; pytest's JUnit
report gives each test's outcome and time. Both are rendered between the
`<!-- faults:begin -->` and `<!-- faults:end -->` markers of --out, leaving
the prose around them alone.

    python scripts/faults.py                                   # 20 trials, a 300 s soak, 120 s of partitions
    python scripts/faults.py --trials 2 --soak-seconds 20 --partition-seconds 15 --out /tmp/reliability.md

pytest is bounded by --max-minutes: past it, it gets SIGINT (so the tests stop
the servers they started) and then SIGKILL, by its PID. Runs in the main
thread; imports only scripts/bench_common.py and the standard library.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from bench_common import REPO, machine_summary, median, positive_int, replace_section

SECTION = "faults"
#: Keys of a figures line that describe the line rather than the scenario.
META_KEYS = ("scenario", "passed", "seconds")
#: How long pytest gets to tear down (and stop its servers) after SIGINT.
TEARDOWN_SECONDS = 60


# -- running the suite ------------------------------------------------------------------------


def run_suite(trials: int, soak_seconds: float, partition_seconds: float, select: Optional[str], figures: Path,
              junit: Path, max_seconds: float) -> int:
    """Run tests/faults under pytest with the long-run settings; return pytest's exit status."""
    env = dict(os.environ, GEOMYS_FAULT_TRIALS=str(trials), GEOMYS_FAULT_SOAK_SECONDS=str(soak_seconds),
               GEOMYS_FAULT_PARTITION_SECONDS=str(partition_seconds), GEOMYS_FAULT_FIGURES=str(figures))
    argv = [sys.executable, "-m", "pytest", "tests/faults", "-q", "--junitxml", str(junit)]
    if select:
        argv += ["-k", select]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    try:
        return proc.wait(max_seconds)
    except subprocess.TimeoutExpired:
        print("faults.py: pytest ran past %.0f s; interrupting it" % max_seconds, file=sys.stderr)
        return stop(proc)
    except KeyboardInterrupt:
        stop(proc)  # the terminal's Ctrl-C reached pytest too; let it tear down
        raise


def stop(proc: subprocess.Popen) -> int:
    """SIGINT pytest so its fixtures stop their servers; SIGKILL it if it does not end in time."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(TEARDOWN_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def read_figures(path: Path) -> dict[str, dict]:
    """Scenario name -> its figures line (the last one, if a name appears twice)."""
    if not path.exists():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {line["scenario"]: line for line in lines}


def read_outcomes(junit: Path) -> list[tuple[str, str, str, float]]:
    """(module, test name, outcome, seconds) of every test case in pytest's JUnit report.

    A scenario marked as failing on a known fault that did fail ("xfailed")
    is told apart from one skipped; one that passed anyway counts as passed.
    """
    cases = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child, label in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(child)
            if found is not None:
                outcome = "xfailed" if found.get("type") == "pytest.xfail" else label
        module = case.get("classname", "").rsplit(".", 1)[-1]
        cases.append((module, case.get("name", "?"), outcome, float(case.get("time", 0))))
    return cases


# -- rendering ------------------------------------------------------------------------------------


def number(value) -> str:
    """An int with thousands separators, a float to three significant digits."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return "{:,}".format(value)
    if isinstance(value, float):
        return "{:,.3g}".format(value) if abs(value) < 1000 else "{:,.0f}".format(value)
    return str(value)


def summarize(value) -> str:
    """One figure as text: a list (one item per trial) as min / median / max, booleans as a count."""
    if not isinstance(value, list):
        return json.dumps(value, sort_keys=True) if isinstance(value, dict) else number(value)
    if not value:
        return "none"
    if all(isinstance(v, bool) for v in value):
        return "%d of %d yes" % (sum(value), len(value))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if min(value) == max(value):
            return "%s (all %d)" % (number(value[0]), len(value))
        return "min %s / median %s / max %s (%d values)" % (
            number(min(value)), number(median(value)), number(max(value)), len(value))
    counts = Counter(str(v) for v in value)
    return ", ".join("%s ×%d" % (text, count) for text, count in counts.items())


def render(cases: list[tuple[str, str, str, float]], figures: dict[str, dict], status: int,
           argv: Sequence[str], seconds: float) -> str:
    """The generated markdown: how it was run, one row per scenario, then each scenario's figures."""
    outcomes = Counter(outcome for _, _, outcome, _ in cases)
    parts = [
        "Generated by `%s` on %s (%s); took %.0f s. pytest exit status %d: %s."
        % (" ".join(["python scripts/faults.py", *argv]), time.strftime("%Y-%m-%d"), machine_summary(),
           seconds, status, ", ".join("%d %s" % (n, o) for o, n in sorted(outcomes.items())) or "no tests ran"),
        "",
        "| scenario | file | result | seconds |",
        "|---|---|---|---:|",
    ]
    parts += ["| `%s` | %s | %s | %.1f |" % (name, module, outcome if outcome == "passed" else "**%s**" % outcome,
                                              took) for module, name, outcome, took in cases]
    for _, name, _, _ in cases:
        line = figures.get(name)
        parts += ["", "#### `%s`" % name, ""]
        values = {k: v for k, v in (line or {}).items() if k not in META_KEYS}
        if not values:
            parts.append("No figures recorded.")
            continue
        parts += ["| figure | value |", "|---|---|"]
        parts += ["| %s | %s |" % (key, summarize(value)) for key, value in sorted(values.items())]
    return "\n".join(parts)


# -- the command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of faults.py."""
    parser = argparse.ArgumentParser(
        description="Run the long fault-injection suite and write its figures into docs/reliability.md.")
    add = parser.add_argument
    add("--trials", type=positive_int, default=20, metavar="N",
        help="repetitions of the scenarios that take trials (default %(default)s)")
    add("--soak-seconds", type=float, default=300.0, metavar="S",
        help="length of the random-fault soak (default %(default)s)")
    add("--partition-seconds", type=float, default=120.0, metavar="S",
        help="length of the run of repeated network partitions (default %(default)s)")
    add("--out", type=Path, default=REPO / "docs" / "reliability.md", metavar="PATH",
        help="markdown file whose generated section is replaced (default docs/reliability.md)")
    add("-k", dest="select", metavar="EXPR", help="run only the scenarios pytest -k EXPR selects")
    add("--max-minutes", type=float, default=240.0, metavar="M",
        help="bound of the whole pytest run (default %(default)s)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the suite, print the figures and write them into --out; return pytest's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geomys-faults-") as tmp:
        figures_path, junit = Path(tmp) / "figures.jsonl", Path(tmp) / "junit.xml"
        try:
            status = run_suite(args.trials, args.soak_seconds, args.partition_seconds, args.select, figures_path,
                               junit, args.max_minutes * 60)
        except KeyboardInterrupt:
            print("faults.py: interrupted; nothing written", file=sys.stderr)
            return 130
        if not junit.exists():
            print("faults.py: pytest wrote no report (exit status %d); nothing written" % status, file=sys.stderr)
            return status or 1
        text = render(read_outcomes(junit), read_figures(figures_path), status, argv, time.monotonic() - started)
    print(text)
    replace_section(args.out, SECTION, text)
    print("\nwritten into %s" % args.out, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
