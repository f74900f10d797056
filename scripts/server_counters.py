"""What a server process spent on a benchmark run: CPU time, context switches, system calls.

CPU time comes from /proc/PID/stat (user and system apart, 10 ms ticks;
the kernel keeps the time of threads that have exited, so handler threads
of closed connections still count). The rest comes from `perf stat`
attached to the process for the length of the run, when perf is installed
and the kernel lets it count: software events (context switches, page
faults) and syscall tracepoints (futex, recvfrom, sendto, write, fsync,
every syscall). Without perf, context switches come from sampling
/proc/PID/task/*/status while the run goes on, which misses threads that
end between two samples and the last moments of those that end: a lower
bound, and labelled so. Imports only the standard library.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

# perf event -> the name a report gives it, in report order. The tracepoints
# need tracefs (root, or perf_event_paranoid <= -1); a kernel without them
# still gives the software events.
PERF_EVENTS = (
    ("context-switches", "context switches"),
    ("page-faults", "page faults"),
    ("syscalls:sys_enter_futex", "futex"),
    ("syscalls:sys_enter_recvfrom", "recvfrom"),
    ("syscalls:sys_enter_sendto", "sendto"),
    ("syscalls:sys_enter_write", "write"),
    ("syscalls:sys_enter_fsync", "fsync"),
    ("raw_syscalls:sys_enter", "all syscalls"),
)
SAMPLE_INTERVAL = 0.1  # seconds between /proc samples when perf is missing
# Runs the command after `-c CODE CPUS` on those CPUs (a comma list): the load's half of pinning.
_ON_CPUS = ("import os, sys; os.sched_setaffinity(0, map(int, sys.argv[1].split(','))); "
            "os.execvp(sys.argv[2], sys.argv[2:])")


def find_perf() -> Optional[str]:
    """The perf binary: `perf` on PATH, else Debian's versioned /usr/bin/perf_X.Y; None if neither."""
    found = shutil.which("perf")
    if found:
        return found
    versioned = sorted(glob.glob("/usr/bin/perf_*"))
    return versioned[-1] if versioned else None


def usable_events(perf: str) -> tuple[str, ...]:
    """The PERF_EVENTS this kernel lets perf count (each tried once on a tiny command)."""
    usable = []
    for event, _ in PERF_EVENTS:
        try:
            run = subprocess.run([perf, "stat", "-x,", "-e", event, "--", "true"], capture_output=True,
                                 text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if run.returncode == 0 and "not supported" not in run.stderr and "<not counted>" not in run.stderr:
            usable.append(event)
    return tuple(usable)


def pin_process(pid: int, cpus: set[int]) -> None:
    """Bind every thread the process has now to `cpus`; threads it starts later inherit it from their creator."""
    for task in glob.glob("/proc/%d/task/*" % pid):
        try:
            os.sched_setaffinity(int(task.rsplit("/", 1)[1]), cpus)
        except (ProcessLookupError, FileNotFoundError):
            continue  # the thread ended meanwhile


def on_cpus(argv: Sequence[str], cpus: set[int]) -> list[str]:
    """`argv` as a command that runs bound to `cpus`."""
    return [sys.executable, "-c", _ON_CPUS, ",".join(map(str, sorted(cpus))), *argv]


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as stat:
        # The command name (field 2) may hold spaces; the fields after it are plain.
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def parse_perf_csv(text: str) -> dict[str, float]:
    """Counts by event from `perf stat -x,` output; events perf could not count are left out."""
    counts = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            counts[parts[2]] = float(parts[0])
        except ValueError:  # "<not counted>", "<not supported>"
            continue
    return counts


def thread_switches(pid: int) -> dict[int, tuple[int, int]]:
    """(voluntary, involuntary) context switches so far of each live thread of the process."""
    switches = {}
    for status_path in glob.glob("/proc/%d/task/*/status" % pid):
        try:
            with open(status_path) as status:
                values = dict(line.split(":", 1) for line in status if "ctxt_switches" in line)
            tid = int(status_path.split("/")[4])
            switches[tid] = (int(values["voluntary_ctxt_switches"]), int(values["nonvoluntary_ctxt_switches"]))
        except (OSError, KeyError, ValueError):
            continue  # the thread ended meanwhile
    return switches


@dataclass
class Usage:
    """What one process spent on one run; `counts` by the names of PERF_EVENTS (or the /proc fallback's)."""

    user_s: float
    system_s: float
    counts: dict[str, float] = field(default_factory=dict)


def run_measured(argv: Sequence[str], pid: int, perf: Optional[str], events: Sequence[str],
                 timeout: float) -> tuple[subprocess.CompletedProcess, Usage]:
    """Run the command `argv` (the load) while measuring process `pid`; return its result and the usage.

    With perf and events, perf stat runs the load as its workload, so it
    counts for exactly as long as the load runs. Raises
    subprocess.TimeoutExpired if the load outlives `timeout`.
    """
    user0, system0 = cpu_times(pid)
    if perf and events:
        with tempfile.NamedTemporaryFile(mode="r", suffix=".perf") as out:
            wrapped = [perf, "stat", "-x,", "-o", out.name, "-e", ",".join(events), "-p", str(pid), "--", *argv]
            run = subprocess.run(wrapped, capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
            counts = parse_perf_csv(out.read())
        names = dict(PERF_EVENTS)
        usage_counts = {names[e]: counts[e] for e in events if e in counts}
    else:
        run, usage_counts = _run_sampling_switches(argv, pid, timeout)
    user1, system1 = cpu_times(pid)
    return run, Usage(user1 - user0, system1 - system0, usage_counts)


def _run_sampling_switches(argv: Sequence[str], pid: int,
                           timeout: float) -> tuple[subprocess.CompletedProcess, dict[str, float]]:
    """Run `argv`, sampling the threads' context switches of `pid` every SAMPLE_INTERVAL until it ends."""
    first = thread_switches(pid)
    last = dict(first)
    deadline = time.monotonic() + timeout
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(argv, timeout)
            last.update(thread_switches(pid))
            time.sleep(SAMPLE_INTERVAL)
        stdout, stderr = proc.communicate()
    last.update(thread_switches(pid))
    voluntary = sum(v - first.get(tid, (0, 0))[0] for tid, (v, _) in last.items())
    involuntary = sum(n - first.get(tid, (0, 0))[1] for tid, (_, n) in last.items())
    result = subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
    return result, {"voluntary switches (at least)": voluntary, "involuntary switches (at least)": involuntary}
