"""geomys-benchmark's pure parts: argument parsing, request plans, encoding, percentiles, output."""

import csv
import io
from collections import Counter

import msgpack
import pytest

from geomys import benchmark
from geomys.benchmark import (CSV_HEADER, LatencySummary, Options, WorkerReport, aggregate, csv_row,
                              encode_batches, format_quiet, format_report, parse_args, parse_tests,
                              percentile, plan_client, split_evenly, summarize)


# -- arguments ----------------------------------------------------------------------------

def test_defaults_follow_redis_benchmark():
    options = parse_args([])
    assert (options.host, options.port, options.clients, options.requests) == ("127.0.0.1", 6379, 50, 100000)
    assert (options.pipeline, options.data_size, options.keyspace) == (1, 3, None)
    assert options.tests == benchmark.TESTS
    assert options.max_seconds == 60.0
    assert not options.quiet and not options.csv and options.password is None


def test_dash_h_is_the_host_not_help():
    assert parse_args(["-h", "10.0.0.7", "-p", "7000"]).host == "10.0.0.7"


def test_every_option_is_parsed():
    options = parse_args(["-c", "4", "-n", "200", "-P", "16", "-d", "100", "-t", "SET, get", "-r", "1000",
                          "-q", "--csv", "-a", "secret", "--procs", "3", "--max-seconds", "2.5"])
    assert options == Options(clients=4, requests=200, pipeline=16, data_size=100, tests=("set", "get"),
                              keyspace=1000, quiet=True, csv=True, password="secret", procs=3, max_seconds=2.5)


@pytest.mark.parametrize("argv", [
    ["-c", "0"], ["-n", "-1"], ["-P", "x"], ["-d", "-1"], ["-t", "set,nosuch"], ["-t", ","],
    ["-r", "0"], ["--procs", "0"], ["--max-seconds", "0"], ["--max-seconds", "inf"], ["-p", "70000"],
    ["--max", "1"], ["--bogus"],
])
def test_bad_arguments_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "geomys-benchmark" in capsys.readouterr().err


def test_test_list_is_case_insensitive_deduplicated_and_ordered():
    assert parse_tests("GET,set,get, incr") == ("get", "set", "incr")


@pytest.mark.parametrize("total, parts, expected", [
    (10, 3, [4, 3, 3]), (2, 4, [1, 1, 0, 0]), (100000, 50, [2000] * 50), (7, 1, [7]),
])
def test_split_evenly_differs_by_at_most_one(total, parts, expected):
    assert split_evenly(total, parts) == expected


# -- plans and encoding ---------------------------------------------------------------------

def _requests(plan):
    return list(plan.requests)


def test_set_without_keyspace_uses_a_fresh_key_per_request():
    plans = [plan_client("set", client, 5, "run1", "xxx") for client in (0, 1)]
    keys = [r["key"] for plan in plans for r in _requests(plan)]
    assert len(set(keys)) == 10
    assert all(key.startswith("key:run1:") for key in keys)
    assert plans[0].expected_codes == frozenset()


def test_set_with_keyspace_uses_random_keys_and_expects_key_exists():
    plan = plan_client("set", 0, 50, "run1", "v", keyspace=3)
    assert {r["key"] for r in _requests(plan)} <= {"key:0", "key:1", "key:2"}
    assert plan.expected_codes == {"KEY_EXISTS"}


def test_get_writes_every_key_it_reads_before_the_clock():
    for keyspace in (None, 1000):
        plan = plan_client("get", 3, 40, "run1", "v", keyspace)
        written = {r["key"] for r in plan.setup if r["command"] == "SET"}
        read = {r["key"] for r in _requests(plan)}
        assert read <= written


def test_lpop_is_preceded_by_as_many_pushes_per_list_as_pops():
    for keyspace in (None, 5):
        plan = plan_client("lpop", 1, 30, "run1", "v", keyspace)
        pushes = Counter(r["key"] for r in plan.setup if r["command"] == "PUSH")
        pops = Counter(r["key"] for r in _requests(plan) if r["command"] == "LPOP")
        assert pushes == pops and sum(pops.values()) == 30


def test_mixed_is_half_gets_half_sets_of_fresh_or_prewritten_keys():
    plan = plan_client("mixed", 0, 2000, "run1", "v")
    requests = _requests(plan)
    commands = Counter(r["command"] for r in requests)
    assert 800 < commands["GET"] < 1200 and commands["GET"] + commands["SET"] == 2000
    set_keys = [r["key"] for r in requests if r["command"] == "SET"]
    assert len(set(set_keys)) == len(set_keys)
    assert {r["key"] for r in requests if r["command"] == "GET"} <= {r["key"] for r in plan.setup}


def test_plans_are_deterministic_per_run_and_differ_between_runs():
    def keys(run):
        return [r["key"] for r in _requests(plan_client("incr", 0, 20, run, "v", keyspace=1000))]
    assert keys("a") == keys("a")
    assert keys("a") != keys("b")


def test_encode_batches_groups_requests_by_pipeline_depth():
    requests = [{"command": "SET", "key": "k%d" % i, "value": "v"} for i in range(7)]
    batches = encode_batches(requests, 7, 3, uniform=False)
    assert [count for _, count in batches] == [3, 3, 1]
    decoded = list(msgpack.Unpacker(io.BytesIO(b"".join(data for data, _ in batches)), raw=False))
    assert decoded == requests


def test_uniform_batches_share_one_encoding():
    plan = plan_client("ping", 0, 10, "run1", "v")
    batches = list(encode_batches(plan.requests, plan.count, 4, plan.uniform))
    assert [count for _, count in batches] == [4, 4, 2]
    assert batches[0][0] is batches[1][0]
    assert list(msgpack.Unpacker(io.BytesIO(batches[2][0]), raw=False)) == [{"command": "PING"}] * 2


# -- statistics ---------------------------------------------------------------------------------

def test_percentile_uses_nearest_rank():
    ordered = [(float(v), 1) for v in range(1, 101)]
    assert percentile(ordered, 100, 50) == 50.0
    assert percentile(ordered, 100, 95) == 95.0
    assert percentile(ordered, 100, 99) == 99.0
    assert percentile(ordered, 100, 100) == 100.0
    assert percentile(ordered, 100, 0) == 1.0


def test_percentile_weighs_samples_by_their_reply_count():
    ordered = [(0.001, 98), (0.5, 2)]
    assert percentile(ordered, 100, 98) == 0.001
    assert percentile(ordered, 100, 99) == 0.5


def test_percentile_of_nothing_is_zero():
    assert percentile([], 0, 50) == 0.0


def test_summarize_converts_microseconds_to_milliseconds():
    summary = summarize({2000: 2, 1000: 1, 10000: 1})
    assert summary.count == 4
    assert summary.min_ms == pytest.approx(1.0) and summary.max_ms == pytest.approx(10.0)
    assert summary.avg_ms == pytest.approx((2 * 2 + 1 + 10) / 4)
    assert summary.p50_ms == pytest.approx(2.0)
    assert summary.p99_ms == pytest.approx(10.0)


def test_summarize_of_no_replies_is_all_zero():
    assert summarize({}) == LatencySummary()
    assert summarize({500: 0}) == LatencySummary()


def _report(**fields):
    return WorkerReport(**fields)


def test_aggregate_merges_workers_over_the_whole_span():
    reports = [
        _report(completed=60, started=10.0, finished=11.0, histogram={1000: 60},
                errors={"NOT_FOUND": 1}, messages={"NOT_FOUND": "key k not found"}),
        _report(completed=40, started=10.5, finished=12.0, histogram={3000: 40, 1000: 1},
                errors={"NOT_FOUND": 2, "WRONG_TYPE": 1}, expected={"KEY_EXISTS": 5}),
    ]
    result = aggregate("get", Options(requests=100, clients=4), reports, procs=2)
    assert result.completed == 100 and result.elapsed == pytest.approx(2.0)
    assert result.rps == pytest.approx(50.0)
    assert result.errors == {"NOT_FOUND": 3, "WRONG_TYPE": 1} and result.error_count == 4
    assert result.expected == {"KEY_EXISTS": 5}
    assert result.latency.count == 101
    assert result.latency.p50_ms == pytest.approx(1.0) and result.latency.max_ms == pytest.approx(3.0)
    assert not result.cut_short


def test_aggregate_notes_a_cut_short_worker():
    reports = [_report(completed=5, started=0.0, finished=1.0, cut_short=True, histogram={100000: 5})]
    assert aggregate("ping", Options(requests=100), reports, procs=1).cut_short


# -- output ---------------------------------------------------------------------------------------

def _result(**overrides):
    fields = dict(completed=1000, started=0.0, finished=0.5, histogram={800: 900, 2000: 100})
    fields.update(overrides)
    return aggregate("set", Options(requests=1000, clients=4, pipeline=2), [WorkerReport(**fields)], procs=1)


def test_quiet_line_reads_like_redis_benchmark():
    assert format_quiet(_result()) == "SET: 2000.00 requests per second, p50=0.800 msec"


def test_quiet_line_mentions_errors_and_a_cut_short_run():
    line = format_quiet(_result(errors={"NO_LEADER": 3}, cut_short=True))
    assert line.startswith("SET: ") and "3 errors" in line and "cut short" in line


def test_csv_row_matches_the_header():
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_HEADER)
    writer.writerow(csv_row(_result()))
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert rows[0]["test"] == "SET" and float(rows[0]["rps"]) == 2000.0
    assert float(rows[0]["p50_ms"]) == 0.8 and float(rows[0]["max_ms"]) == 2.0 and rows[0]["errors"] == "0"


def test_report_shows_percentiles_errors_by_code_and_expected_replies():
    text = format_report(_result(errors={"NOT_FOUND": 2}, messages={"NOT_FOUND": "key k not found"},
                                 expected={"KEY_EXISTS": 7}))
    for part in ("1000 requests completed", "4 parallel clients", "pipeline 2", "3 bytes payload",
                 "requests per second", "p50=", "p95=", "p99=", "max=", "errors: 2 (NOT_FOUND=2)",
                 "KEY_EXISTS=7"):
        assert part in text


def test_consistent_marks_every_get_and_nothing_else():
    for test in ("get", "mixed"):
        plan = plan_client(test, 0, 50, "run1", "v", keyspace=10, consistent=True)
        requests = _requests(plan)
        assert all(r.get("consistent") is True for r in requests if r["command"] == "GET")
        assert all("consistent" not in r for r in requests + plan.setup if r["command"] != "GET")
    assert all("consistent" not in r for r in _requests(plan_client("get", 0, 5, "run1", "v")))
