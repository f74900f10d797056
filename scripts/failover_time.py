#!/usr/bin/env python3
"""How long a Geomys cluster refuses writes after its leader is killed.

Each trial starts a fresh three-node cluster, runs a light write load (one
writer thread per follower, one SET at a time every 10 ms, each stamped when
sent and when answered), kills the leader with SIGKILL, and reports the time
from the kill to the first write sent after it that is acknowledged (OK),
plus when INFO on a survivor first showed a new leader. Medians over trials.

    python scripts/failover_time.py                        # 5/15 (1 trial) and 0.2/1.0 (3 trials)
    python scripts/failover_time.py --timings 0.2/1.0 --trials 1 --output /tmp/perf.md

Every wait is bounded; servers are stopped by PID at the end and on Ctrl-C.
The main thread drives the trial and polls INFO; the writer threads only send.
"""

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from bench_common import (REPO, BenchError, Connection, Servers, info, machine_summary, median,
                          positive_int, replace_section, run_main, start_cluster, wait_until)

SECTION = "failover_time"
WRITE_GAP_SECONDS = 0.01
# Longer than a forwarded write may take (rpc_timeout, 2 s), so a slow answer is not counted as lost.
WRITER_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Timings:
    """A cluster's heartbeat_interval and failure_timeout, in seconds."""

    heartbeat: float
    failure_timeout: float

    def __str__(self) -> str:
        return "%g / %g s" % (self.heartbeat, self.failure_timeout)


@dataclass(frozen=True, slots=True)
class Write:
    """One write of the load: when it was sent and answered (monotonic), and how."""

    sent: float
    answered: float
    outcome: str  # OK, an error code, or DISCONNECTED


@dataclass(frozen=True, slots=True)
class Trial:
    """The outcome of one kill."""

    first_write: float  # seconds from the kill to the first acknowledged write sent after it
    elected: Optional[float]  # seconds from the kill until INFO on a survivor said "leader"
    new_leader: int
    refused: Counter


@dataclass
class Writer:
    """A thread that writes fresh keys to one node, one at a time, and records every write."""

    port: int
    name: str
    writes: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="writer-%s" % self.name, daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        """Send SETs until stopped; reconnect after a broken connection."""
        conn: Optional[Connection] = None
        count = 0
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = Connection(self.port, timeout=WRITER_TIMEOUT)
                reply = conn.call("SET", key="failover:%s:%d" % (self.name, count), value="x")
                outcome = "OK" if reply.get("status") == "OK" else str(reply.get("code"))
            except (OSError, BenchError):
                outcome = "DISCONNECTED"
                if conn is not None:
                    conn.close()
                conn = None
            self.writes.append(Write(sent, time.monotonic(), outcome))
            count += 1
            self.stop.wait(WRITE_GAP_SECONDS)
        if conn is not None:
            conn.close()

    def first_ok_after(self, instant: float) -> Optional[Write]:
        """The first acknowledged write sent at or after `instant`."""
        return next((w for w in list(self.writes) if w.sent >= instant and w.outcome == "OK"), None)


def leader_among(ports: Sequence[int]) -> Optional[int]:
    """The node id that INFO on one of `ports` reports as leader of itself, if any."""
    for port in ports:
        try:
            node = info(port, timeout=2.0)
        except (OSError, BenchError):
            continue
        if node.get("role") == "leader":
            return int(node["node_id"])
    return None


def run_trial(workdir: Path, timings: Timings) -> Trial:
    """Start a cluster, load it lightly, kill -9 the leader and time the way back to accepted writes."""
    bound = 4 * timings.failure_timeout + 30
    with Servers() as servers:
        nodes = start_cluster(servers, workdir, timings.heartbeat, timings.failure_timeout)
        leader, survivors = nodes[0], nodes[1:]
        writers = [Writer(node.port, node.name) for node in survivors]
        threads = [writer.start() for writer in writers]
        try:
            start = time.monotonic()
            wait_until(lambda: all(w.first_ok_after(start) for w in writers), 30, "the writers' first OK")
            killed = time.monotonic()
            leader.kill()
            elected: Optional[float] = None
            deadline = killed + bound
            while True:
                if elected is None and leader_among([n.port for n in survivors]) is not None:
                    elected = time.monotonic() - killed
                accepted = [w for w in (writer.first_ok_after(killed) for writer in writers) if w]
                if accepted:
                    break
                if time.monotonic() >= deadline:
                    raise BenchError("no write was accepted within %.0f s of killing the leader" % bound)
                time.sleep(0.02)
            first = min(w.answered for w in accepted) - killed
            # The new leader is known by now: a write was acknowledged.
            new_leader = wait_until(lambda: leader_among([n.port for n in survivors]), 10, "a leader in INFO")
            if elected is None:
                elected = time.monotonic() - killed
            refused = Counter(w.outcome for writer in writers for w in list(writer.writes)
                              if w.sent >= killed and w.answered <= killed + first and w.outcome != "OK")
        finally:
            for writer in writers:
                writer.stop.set()
            for thread in threads:
                thread.join(WRITER_TIMEOUT + 1)
    return Trial(first, elected, new_leader, refused)


def render(results: dict[Timings, list[Trial]], argv: Sequence[str], seconds: float) -> str:
    """The markdown snippet: one row per timing, then every trial."""
    lines = [
        "Generated by `%s` on %s (%s); took %.0f s."
        % (" ".join(["python scripts/failover_time.py", *argv]), time.strftime("%Y-%m-%d"), machine_summary(),
           seconds),
        "",
        "| heartbeat_interval / failure_timeout | trials | kill → first acknowledged write, median (min–max) "
        "| kill → INFO shows a new leader, median | writes refused meanwhile |",
        "|---|---:|---:|---:|---|",
    ]
    for timings, trials in results.items():
        firsts = [t.first_write for t in trials]
        refused = sum((t.refused for t in trials), Counter())
        lines.append("| %s | %d | %.2f s (%.2f–%.2f) | %.2f s | %s |" % (
            timings, len(trials), median(firsts), min(firsts), max(firsts),
            median([t.elected for t in trials]),
            ", ".join("%s × %d" % item for item in sorted(refused.items())) or "none"))
    lines += ["", "Trials: " + "; ".join(
        "%s: %s" % (timings, ", ".join("%.2f s (node %d took over)" % (t.first_write, t.new_leader)
                                       for t in trials))
        for timings, trials in results.items()) + "."]
    return "\n".join(lines)


def parse_timings(text: str) -> list[Timings]:
    """`5/15,0.2/1.0` -> [Timings(5, 15), Timings(0.2, 1.0)]."""
    result = []
    for part in text.split(","):
        try:
            heartbeat, failure = (float(x) for x in part.split("/"))
        except ValueError:
            raise argparse.ArgumentTypeError("expected HEARTBEAT/FAILURE_TIMEOUT pairs, e.g. 5/15,0.2/1.0") from None
        if not 0 < 2 * heartbeat <= failure:
            raise argparse.ArgumentTypeError("failure_timeout must be at least 2 x heartbeat_interval: %s" % part)
        result.append(Timings(heartbeat, failure))
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command line of failover_time.py."""
    parser = argparse.ArgumentParser(description="Measure how long a 3-node Geomys cluster refuses writes "
                                                 "after kill -9 of its leader.")
    parser.add_argument("--timings", type=parse_timings, default=parse_timings("5/15,0.2/1.0"), metavar="LIST",
                        help="comma list of HEARTBEAT/FAILURE_TIMEOUT in seconds (default 5/15,0.2/1.0)")
    parser.add_argument("--trials", type=positive_int, default=None, metavar="N",
                        help="trials per timing (default 1 when failure_timeout >= 5 s, else 3)")
    parser.add_argument("--output", type=Path, default=None, metavar="PATH",
                        help="also write the snippet into this markdown file, between its "
                             "failover_time markers (e.g. %s)" % (REPO / "docs" / "performance.md"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the trials, print the snippet and write it into --output if given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    results: dict[Timings, list[Trial]] = {}
    with tempfile.TemporaryDirectory(prefix="geomys-failover-") as tmp:
        for timings in args.timings:
            trials = args.trials or (1 if timings.failure_timeout >= 5 else 3)
            for number in range(trials):
                trial = run_trial(Path(tmp) / ("%g-%g-%d" % (timings.heartbeat, timings.failure_timeout,
                                                             number)), timings)
                results.setdefault(timings, []).append(trial)
                print("%s trial %d: first write accepted %.2f s after the kill" % (
                    timings, number + 1, trial.first_write), file=sys.stderr, flush=True)
    text = render(results, argv, time.monotonic() - started)
    print(text)
    if args.output:
        replace_section(args.output, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main("failover_time.py", main))
