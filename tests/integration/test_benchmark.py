"""geomys-benchmark against real servers: output formats, exit statuses, --max-seconds, the baseline."""

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.certs import Pki
from tests.helpers import HOST, RawClient, free_port, geomys_command, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SMALL = ["-n", "200", "-c", "4", "-P", "4", "--procs", "2"]
QUIET_LINE = re.compile(r"^([A-Z]+): ([\d.]+) requests per second, p50=([\d.]+) msec$")


def bench(port: int, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run geomys-benchmark against 127.0.0.1:port and capture its output."""
    return subprocess.run(geomys_command("geomys-benchmark") + ["-h", HOST, "-p", str(port), *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def csv_rows(port: int, *args: str) -> dict:
    """Run with --csv and return the rows by test name, checking the columns."""
    run = bench(port, *SMALL, "--csv", *args)
    assert run.returncode == 0, run.stderr
    reader = csv.DictReader(io.StringIO(run.stdout))
    assert tuple(reader.fieldnames) == ("test", "rps", "avg_ms", "min_ms", "p50_ms", "p95_ms", "p99_ms",
                                        "max_ms", "errors")
    return {row["test"]: row for row in reader}


def test_quiet_prints_one_line_per_test(server):
    run = bench(server.port, *SMALL, "-t", "set,get,incr", "-q")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [QUIET_LINE.match(line).group(1) for line in lines] == ["SET", "GET", "INCR"]
    for line in lines:
        _, rps, p50 = QUIET_LINE.match(line).groups()
        assert float(rps) > 0 and float(p50) > 0


def test_tls_runs_over_the_tls_port(start_server, tmp_path):
    pki = Pki(tmp_path / "pki")
    tls_port = free_port()
    start_server(tls_port=tls_port, **pki.server_options(pki.issue("server")))
    run = bench(tls_port, *SMALL, "-t", "set,get", "-q", "--tls", "--cacert", pki.ca_file)
    assert run.returncode == 0, run.stderr
    assert [QUIET_LINE.match(line).group(1) for line in run.stdout.splitlines()] == ["SET", "GET"]
    plaintext = bench(tls_port, *SMALL, "-t", "ping", "-q")
    assert plaintext.returncode == 1, plaintext


def test_csv_has_every_column_and_no_errors(server):
    rows = csv_rows(server.port, "-t", "set,get,incr")
    assert list(rows) == ["SET", "GET", "INCR"]
    for row in rows.values():
        assert float(row["rps"]) > 0
        assert 0 < float(row["min_ms"]) <= float(row["p50_ms"]) <= float(row["p99_ms"]) <= float(row["max_ms"])
        assert row["errors"] == "0"


def test_the_get_test_reads_keys_that_exist(server):
    """GET measures hits: the keys were written before the clock started."""
    rows = csv_rows(server.port, "-t", "get")
    assert rows["GET"]["errors"] == "0"


def test_list_and_mixed_tests_run_without_errors(server):
    rows = csv_rows(server.port, "-t", "ping,push,lpop,mixed")
    assert list(rows) == ["PING", "PUSH", "LPOP", "MIXED"]
    assert all(row["errors"] == "0" for row in rows.values())


def test_a_random_keyspace_counts_key_exists_as_served(server):
    rows = csv_rows(server.port, "-r", "10", "-t", "set,get,mixed,lpop")
    assert all(row["errors"] == "0" for row in rows.values())
    run = bench(server.port, *SMALL, "-r", "10", "-t", "set")
    assert "KEY_EXISTS=" in run.stdout and "errors: 0" in run.stdout


def test_default_report_shows_latency_percentiles(server):
    run = bench(server.port, *SMALL, "-t", "ping")
    assert run.returncode == 0, run.stderr
    assert "====== PING ======" in run.stdout
    assert "200 requests completed" in run.stdout
    for part in ("p50=", "p95=", "p99=", "max=", "requests per second", "errors: 0"):
        assert part in run.stdout


def test_password_is_sent_on_every_connection(start_server):
    server = start_server(requirepass="s3cret")
    ok = bench(server.port, *SMALL, "-t", "set,get", "--csv", "-a", "s3cret")
    assert ok.returncode == 0, ok.stderr
    assert all(row["errors"] == "0" for row in csv.DictReader(io.StringIO(ok.stdout)))
    wrong = bench(server.port, *SMALL, "-t", "set", "-a", "nope")
    assert wrong.returncode == 1 and "authentication failed" in wrong.stderr
    missing = bench(server.port, *SMALL, "-t", "set")
    assert missing.returncode == 1 and "-a" in missing.stderr


@pytest.mark.parametrize("args", [["-t", "nosuch"], ["-c", "0"], ["-P", "many"], ["--max-seconds", "-1"]])
def test_bad_arguments_exit_2(args):
    run = bench(free_port(), *args)
    assert run.returncode == 2
    assert "geomys-benchmark" in run.stderr


def test_a_dead_port_exits_1_with_one_clear_line():
    port = free_port()
    run = bench(port, "-t", "ping", "-n", "10")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "cannot connect to 127.0.0.1:%d" % port in run.stderr


def test_max_seconds_cuts_a_long_run_short(server):
    run = bench(server.port, "-t", "ping", "-n", "100000000", "-c", "2", "--procs", "1", "--max-seconds", "0.5")
    assert run.returncode == 0, run.stderr
    assert "cut short by --max-seconds" in run.stdout
    done = int(re.search(r"(\d+) of 100000000 requests completed", run.stdout).group(1))
    assert 0 < done < 100000000


@pytest.fixture
def baseline_port():
    """scripts/baseline_server.py on a free port, killed by its PID afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "baseline_server.py"), "--port", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def answers_ping():
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
        try:
            with RawClient(port, timeout=2) as client:
                return client.call("PING").get("message") == "PONG"
        except OSError:
            return False

    try:
        wait_until(answers_ping, 15, 0.05, "the baseline server to answer PING")
        yield port
    finally:
        proc.kill()
        proc.wait(10)
        proc.stderr.close()


def test_the_baseline_server_answers_the_benchmark(baseline_port):
    rows = csv_rows(baseline_port, "-t", "ping,set,get,incr,push,lpop")
    assert list(rows) == ["PING", "SET", "GET", "INCR", "PUSH", "LPOP"]
    assert all(float(row["rps"]) > 0 and row["errors"] == "0" for row in rows.values())
