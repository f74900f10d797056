"""The benchmark scripts run end to end on tiny inputs and report figures that parse.

Functional checks only: no assertion here is about speed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run_script(name: str, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    """Run scripts/NAME with this interpreter (its geomys console scripts sit beside it)."""
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def bench_into_section(tmp_path, section: str, *args: str, timeout: float) -> str:
    """Run bench.py with `args` into a file holding only `section` (with "old" in it); return the file's text.

    Checks that the run succeeded and that it wrote its own section and no other.
    """
    output = tmp_path / "performance.md"
    output.write_text("prose\n\n<!-- %s:begin -->\nold\n<!-- %s:end -->\n" % (section, section))
    run = run_script("bench.py", *args, "--output", str(output), timeout=timeout)
    assert run.returncode == 0, run.stderr
    text = output.read_text()
    assert "old" not in text and "<!-- bench:begin -->" not in text  # only its own section is written
    return text


def test_bench_quick_writes_its_tables_between_the_markers_and_keeps_the_prose(tmp_path):
    output = tmp_path / "performance.md"
    output.write_text("# Title\n\nprose before\n\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\n\n"
                      "prose after\n")
    run = run_script("bench.py", "--quick", "--servers", "standalone,baseline", "--tests", "set",
                     "--requests", "500", "--max-seconds", "10", "--output", str(output))
    assert run.returncode == 0, run.stderr
    text = output.read_text()
    assert text.startswith("# Title\n\nprose before\n") and text.endswith("prose after\n")
    assert "old table" not in text
    assert text.count("<!-- bench:begin -->") == 1 and text.count("<!-- bench:end -->") == 1
    rows = re.findall(r"^\| Geomys standalone, persistence none \| ([\d,]+)\*?!? \(([\d.]+)\) \|", text, re.M)
    assert len(rows) == 4  # 1 and 50 clients, pipeline 1 and 16
    for rps, ratio in rows:
        assert int(rps.replace(",", "")) > 0 and float(ratio) > 0
    goal = re.search(r"^\| standalone SET vs baseline, 50 clients, -P 1 \| ([\d.]+) \| ≥ 0\.90 \| "
                     r"(yes|\*\*no\*\*) \|", text, re.M)
    assert goal and float(goal.group(1)) > 0
    assert "Geomys standalone" in run.stdout  # the tables are printed too


@pytest.mark.parametrize("counters", ["perf if it works", "no perf"])
def test_bench_cpu_reports_cpu_per_request_beside_the_baseline_in_its_own_section(counters, tmp_path):
    extra = ["--no-perf"] if counters == "no perf" else []
    if counters == "no perf" and len(os.sched_getaffinity(0)) >= 2:
        extra.append("--pin")  # each server on one CPU, the load on the others
    section = "bench_cpu_pinned" if "--pin" in extra else "bench_cpu"
    # --source runs the geomys package of another checkout beside this one's: this one again, here.
    source = SCRIPTS.parent
    # Enough requests for the 10 ms ticks of /proc/PID/stat to count every server's CPU.
    text = bench_into_section(tmp_path, section, "--cpu", "--quick", "--tests", "set", "--clients", "8",
                              "--requests", "2000", "--max-seconds", "10", "--source", str(source), *extra,
                              timeout=90.0)
    rows = re.findall(r"^\| 8 clients, -P (1|16) \| (baseline|Geomys[^|]*) \| ([\d,]+)\*?!? \| "
                      r"([\d.]+) \+ ([\d.]+) = \*\*([\d.]+)\*\* \| ([\d.]+|–) \|(.*)\|$", text, re.M)
    servers = ("baseline", "Geomys", "Geomys at %s" % source.name, "Geomys writethrough",
               "Geomys writethrough at %s" % source.name)
    assert sorted((r[0], r[1]) for r in rows) == sorted((p, server) for p in ("1", "16") for server in servers)
    for _, server, rps, user, system, total, factor, counts in rows:
        assert int(rps.replace(",", "")) > 0 and float(total) > 0
        assert abs(float(user) + float(system) - float(total)) < 0.11
        assert (factor == "–") == (server == "baseline")
        switches = [float(c) for c in counts.split("|")][0]  # the first count is context switches either way
        # Sampled from /proc, the switches of threads that end between two samples are missed.
        assert switches > 0 if counters != "no perf" else switches >= 0
    if counters == "no perf":
        assert "perf was not used (--no-perf)" in text and "voluntary switches (at least) /req" in text
        assert ("Pinned (--pin)" in text) == ("--pin" in extra)
    assert re.search(r"^\| SET, 8 clients, -P 1 \| [\d.]+ (yes|\*\*no\*\*) \| [\d.]+ (yes|\*\*no\*\*) \| "
                     r"[\d.]+ (yes|\*\*no\*\*) \|$", text, re.M), text


def test_bench_pysyncobj_measures_the_cluster_beside_both_pysyncobj_settings_in_its_own_section(tmp_path):
    # One client count and a small -n keep it short; pysyncobj is pip installed if it is missing.
    text = bench_into_section(tmp_path, "pysyncobj", "--pysyncobj", "--quick", "--clients", "1",
                              "--requests", "100", "--max-seconds", "5", timeout=240)
    figures = r"([\d,]+)[*!†]* \| ([\d.]+)"
    rows = re.findall(r"^\| via the (leader|follower), 1 client, -P (1|16) \| %s \| %s \| %s \| ([\d.]+) \| "
                      r"(yes|\*\*no\*\*) \|$" % (figures, figures, figures), text, re.M)
    assert sorted((row[0], row[1]) for row in rows) == [("follower", "1"), ("follower", "16"),
                                                        ("leader", "1"), ("leader", "16")]
    for row in rows:
        assert all(int(rps.replace(",", "")) > 0 for rps in row[2:8:2])  # Geomys, batching off, 2 ms
        assert all(float(p50) > 0 for p50 in row[3:8:2]) and float(row[8]) > 0


def test_failover_time_reports_a_positive_time_with_test_timings(tmp_path):
    output = tmp_path / "performance.md"
    run = run_script("failover_time.py", "--timings", "0.2/1.0", "--trials", "1", "--output", str(output))
    assert run.returncode == 0, run.stderr
    row = re.search(r"^\| 0\.2 / 1 s \| 1 \| ([\d.]+) s", run.stdout, re.M)
    assert row and float(row.group(1)) > 0
    assert "<!-- failover_time:begin -->" in output.read_text()


def test_memory_bench_reports_positive_figures_for_a_few_keys():
    run = run_script("memory_bench.py", "--keys", "2000")
    assert run.returncode == 0, run.stderr
    per_key = re.search(r"^\| Geomys standalone \| [\d.]+ MiB \| [\d.]+ MiB \| (-?\d+) \|", run.stdout, re.M)
    assert per_key and int(per_key.group(1)) > 0
    replay = re.search(r"replaying 2,000 records .*\| ([\d.]+) \|$", run.stdout, re.M)
    assert replay and float(replay.group(1)) > 0
    join = re.search(r"join sync of 2,000 keys.*\| ([\d.]+) \|$", run.stdout, re.M)
    assert join and float(join.group(1)) > 0


def test_faults_run_twice_rewrites_only_its_section_of_a_copy_of_reliability_md(tmp_path):
    # -k that selects no scenario: pytest runs nothing, and the script still writes its section.
    original = (SCRIPTS.parent / "docs" / "reliability.md").read_text()
    head, _, rest = original.partition("\n<!-- faults:begin -->\n")
    _, _, tail = rest.partition("\n<!-- faults:end -->\n")
    output = tmp_path / "reliability.md"
    output.write_text(original)
    for run_number in (1, 2):
        run = run_script("faults.py", "-k", "no_scenario_has_this_name_%d" % run_number, "--out", str(output))
        assert "no tests ran" in run.stdout, run.stdout + run.stderr
        text = output.read_text()
        assert text.startswith(head + "\n<!-- faults:begin -->\n"), run_number
        assert text.endswith("\n<!-- faults:end -->\n" + tail), run_number
        section = text[len(head):len(text) - len(tail)]
        assert section.count("<!-- faults:") == 2 and "no_scenario_has_this_name_%d" % run_number in section


def test_bench_tls_quick_reports_ratios_for_every_cell_and_the_handshake_cost(tmp_path):
    output = tmp_path / "performance.md"
    run = run_script("bench_tls.py", "--quick", "--requests", "300", "--connections", "10", "--max-seconds", "10",
                     "--output", str(output), timeout=240)
    assert run.returncode == 0, run.stderr
    text = output.read_text()
    assert text.count("<!-- tls:begin -->") == 1
    client = re.findall(r"^\| (SET|GET), -P (?:1|16) \| (\d+) \| (\d+) \| ([\d.]+)", text, re.M)
    cluster = re.findall(r"^\| via the (leader|follower), -P (?:1|16) \| (\d+) \| (\d+) \| ([\d.]+) \| "
                         r"[\d.]+ → [\d.]+ \|$", text, re.M)
    assert len(client) == 4 and len(cluster) == 4, text
    for _, plain, tls, ratio in client + cluster:
        assert int(plain) > 0 and int(tls) > 0 and float(ratio) > 0
    assert re.search(r"([\d.]+) ms plaintext, ([\d.]+) ms TLS", text), text


def test_bench_reads_measures_local_and_consistent_get_on_the_leader_and_a_follower_in_its_own_section(tmp_path):
    text = bench_into_section(tmp_path, "reads", "--reads", "--quick", "--clients", "50", "--requests", "200",
                              "--max-seconds", "10", timeout=180)
    rows = re.findall(r"^\| (on the leader|through a follower), 50 clients, -P (1|16) \| ([\d,]+)[*!]* \| "
                      r"([\d,]+)[*!]* \| ([\d.]+) \| .* \| ([\d.]+) \|$", text, re.M)
    assert sorted(row[:2] for row in rows) == [("on the leader", "1"), ("on the leader", "16"),
                                               ("through a follower", "1"), ("through a follower", "16")]
    for row in rows:
        assert int(row[2].replace(",", "")) > 0 and int(row[3].replace(",", "")) > 0 and float(row[4]) > 0
        assert float(row[5]) >= 1    # reads per round: every round served at least one
