"""The pure parts of the scripts in scripts/: reading py-spy's output, summarising fault figures,
running and tabulating the PySyncObj comparison.

The scripts' end-to-end runs are in tests/integration/test_bench_scripts.py
(sampling with py-spy and the long fault run are not part of the test suite).
"""

import importlib.util
import json
import os
import sys
import threading
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the scripts import bench_common from beside them


def load_script(name: str):
    """Import scripts/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / ("%s.py" % name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


profile = load_script("profile_hot_path")
faults = load_script("faults")
bench_common = load_script("bench_common")
bench = load_script("bench")
pysyncobj_node = load_script("pysyncobj_node")  # imports pysyncobj only when a node starts
server_counters = load_script("server_counters")
count_bytecodes = load_script("count_bytecodes")


DOCS = SCRIPTS.parent / "docs"
#: Every script that writes a generated section, and the doc it writes by default.
WRITERS = {"bench": "performance.md", "failover_time": "performance.md", "memory_bench": "performance.md",
           "faults": "reliability.md"}


def split_at_section(text: str, name: str) -> tuple[str, str, str]:
    """(before the begin marker line, the section between the marker lines, after the end marker line)."""
    begin, end = "\n<!-- %s:begin -->\n" % name, "\n<!-- %s:end -->\n" % name
    assert text.count(begin) == 1 and text.count(end) == 1, name
    head, rest = text.split(begin)
    body, tail = rest.split(end)
    return head, body, tail


@pytest.mark.parametrize("script", sorted(WRITERS))
def test_each_writer_uses_the_shared_section_writer_and_its_doc_holds_its_section_once(script):
    module = load_script(script)
    writer = getattr(module, "replace_section", None) or module.publish   # publish prints, then replaces
    assert writer.__module__ == "bench_common"
    split_at_section((DOCS / WRITERS[script]).read_text(), module.SECTION)


@pytest.mark.parametrize("script", sorted(WRITERS))
def test_writing_a_section_twice_into_a_copy_of_its_doc_changes_nothing_outside_it(script, tmp_path):
    name = load_script(script).SECTION
    original = (DOCS / WRITERS[script]).read_text()
    copy = tmp_path / WRITERS[script]
    copy.write_text(original)
    head, _, tail = split_at_section(original, name)
    for figures in ("first run\n\n| a | b |", "second run, longer\n\n| a | b |\n| 1 | 2 |"):
        bench_common.replace_section(copy, name, figures)
        assert split_at_section(copy.read_text(), name) == (head, figures, tail)


def test_a_generated_section_replaces_only_its_own_marker_lines_not_prose_naming_them(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Prose: the part between `<!-- x:begin -->` and `<!-- x:end -->` is generated.\n\n"
                   "<!-- x:begin -->\nold\n<!-- x:end -->\n\nafter\n")
    bench_common.replace_section(doc, "x", "new figures")
    assert doc.read_text() == ("Prose: the part between `<!-- x:begin -->` and `<!-- x:end -->` is generated.\n\n"
                               "<!-- x:begin -->\nnew figures\n<!-- x:end -->\n\nafter\n")


def test_perf_stat_csv_gives_a_count_per_event_and_leaves_out_what_perf_could_not_count():
    text = ("# started on Tue Dec  1 18:00:00 2026\n\n"
            "21102,,context-switches,1000,100.00,,\n"
            "<not counted>,,syscalls:sys_enter_fsync,0,0.00,,\n"
            "<not supported>,,page-faults,0,0.00,,\n"
            "42633,,raw_syscalls:sys_enter,1000,100.00,,\n")
    assert server_counters.parse_perf_csv(text) == {"context-switches": 21102.0, "raw_syscalls:sys_enter": 42633.0}


def test_this_process_has_cpu_time_and_context_switches_to_read():
    user, system = server_counters.cpu_times(os.getpid())
    assert user > 0 and system >= 0
    switches = server_counters.thread_switches(os.getpid())
    assert threading.get_native_id() in switches and all(v >= 0 and n >= 0 for v, n in switches.values())


def test_bytecodes_per_request_are_counted_alike_on_every_run_and_leave_the_stand_in_socket_out():
    (_, geomys), (_, baseline) = count_bytecodes.servers()
    first, again = (count_bytecodes.count(geomys, count_bytecodes.reads("set", 16, run)) for run in (1, 2))
    assert first[:2] == again[:2] and first[0] > 0 and first[1] > 0
    assert first[0] == sum(n for name, n in first[2].items() if not name.startswith("count_bytecodes.py"))
    base_ops, base_calls, _ = count_bytecodes.count(baseline, count_bytecodes.reads("set", 16, 3))
    assert 0 < base_ops < first[0] and base_calls > 0


def test_the_in_process_time_serves_every_request_of_each_run():
    served = []

    def serve(chunks):
        served.append(sum(len(chunk) for chunk in chunks))

    assert count_bytecodes.best_time(serve, "get", 16, runs=2) > 0
    assert served == [sum(map(len, count_bytecodes.reads("get", 16, 1000)))] * 2


def test_python_and_native_frames_are_named_by_file_and_function_without_lines():
    assert profile.frame_name("execute (geomys/engine.py:143)") == "engine.py:execute"
    assert profile.frame_name("sem_post (libc.so.6)") == "libc.so.6:sem_post"


def test_samples_add_up_per_function_as_own_time_and_as_time_with_callees(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("run (a.py:1);work (b.py:5) 3\n"
                   "run (a.py:1);work (b.py:6);sem_post (libc.so.6) 2\n"
                   "run (a.py:2) 1\n")
    total, own, inclusive = profile.aggregate(raw)
    assert total == 6
    assert own == {"b.py:work": 3, "libc.so.6:sem_post": 2, "a.py:run": 1}
    assert inclusive["a.py:run"] == 6 and inclusive["b.py:work"] == 5


def test_a_figure_per_trial_is_summarised_as_min_median_max_and_flags_as_a_count():
    assert faults.summarize([3, 1, 2]) == "min 1 / median 2 / max 3 (3 values)"
    assert faults.summarize([0, 0]) == "0 (all 2)"
    assert faults.summarize([True, False, True]) == "2 of 3 yes"
    assert faults.summarize(1234567) == "1,234,567"


def test_the_rendered_section_has_a_row_per_scenario_and_its_figures(tmp_path):
    figures_file = tmp_path / "figures.jsonl"
    figures_file.write_text(json.dumps({"scenario": "test_a", "passed": True, "seconds": 1.0,
                                        "missing": [0, 0], "acked": [1500, 2500]}) + "\n")
    cases = [("test_x", "test_a", "passed", 1.5), ("test_x", "test_b", "failed", 2.0)]
    text = faults.render(cases, faults.read_figures(figures_file), 1, ["--trials", "2"], 3.0)
    assert "| `test_a` | test_x | passed | 1.5 |" in text
    assert "| `test_b` | test_x | **failed** | 2.0 |" in text
    assert "| missing | 0 (all 2) |" in text
    assert "| acked | min 1,500 / median 2,000 / max 2,500 (2 values) |" in text
    assert "No figures recorded." in text  # test_b recorded none


def test_a_scenario_failing_on_a_known_fault_reads_as_xfailed_not_skipped(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.faults.test_x" name="test_a" time="2.5">'
        '<skipped type="pytest.xfail" message="a known fault" /></testcase>'
        '<testcase classname="tests.faults.test_x" name="test_b" time="1.0">'
        '<skipped type="pytest.skip" message="no nft" /></testcase>'
        '<testcase classname="tests.faults.test_x" name="test_c" time="1.0" />'
        '</testsuite></testsuites>')
    assert faults.read_outcomes(junit) == [("test_x", "test_a", "xfailed", 2.5), ("test_x", "test_b", "skipped", 1.0),
                                           ("test_x", "test_c", "passed", 1.0)]


# -- make_certs.py ----------------------------------------------------------------------

make_certs = load_script("make_certs")


def test_make_certs_names_each_nodes_addresses_and_chains_to_its_ca(tmp_path):
    from cryptography import x509

    from geomys import tls

    make_certs.write_all(tmp_path, {1: ("10.0.0.11", "geomys-1.lan"), 2: ("10.0.0.12",)})
    node1 = x509.load_pem_x509_certificate((tmp_path / "node1.crt").read_bytes())
    names = node1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["10.0.0.11", "geomys-1.lan"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.key", "ca.pem", "client.crt", "client.key", "node1.crt", "node1.key", "node2.crt", "node2.key"]
    assert all((tmp_path / name).stat().st_mode & 0o777 == 0o600 for name in ("ca.key", "node1.key", "client.key"))
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    node1.verify_directly_issued_by(ca)
    tls.server_context(tls.TlsFiles(str(tmp_path / "node2.crt"), str(tmp_path / "node2.key"),
                                    str(tmp_path / "ca.pem")), "yes")


def test_make_certs_run_again_keeps_the_ca_and_renews_the_node_certificates(tmp_path):
    make_certs.write_all(tmp_path, {1: make_certs.LOCAL_NAMES})
    ca, node = (tmp_path / "ca.pem").read_bytes(), (tmp_path / "node1.crt").read_bytes()
    make_certs.write_all(tmp_path, {1: make_certs.LOCAL_NAMES})
    assert (tmp_path / "ca.pem").read_bytes() == ca
    assert (tmp_path / "node1.crt").read_bytes() != node


def test_make_certs_parses_node_addresses():
    assert make_certs.parse_node("2=10.0.0.12,vm2.lan") == (2, ("10.0.0.12", "vm2.lan"))


@pytest.mark.parametrize("bad", ["x=1.2.3.4", "0=1.2.3.4", "1=", "1"])
def test_make_certs_refuses_a_node_without_an_id_or_an_address(bad):
    with pytest.raises(make_certs.argparse.ArgumentTypeError):
        make_certs.parse_node(bad)


# -- the PySyncObj comparison ------------------------------------------------------------------


class FakeReplDict:
    """ReplDict.set's calling conventions over a plain dict.

    A callback-style set is held until `release_at` sets are pending, then all
    pending callbacks run (with `reason`), the way a leader answers a batch;
    `release_at=None` never answers. A sync set answers at once.
    """

    def __init__(self, release_at=None, reason=0):
        self.data, self.pending, self.most_pending = {}, [], 0
        self.release_at, self.reason = release_at, reason
        self.lock = threading.Lock()

    def set(self, key, value, sync=False, timeout=None, callback=None):
        with self.lock:
            assert key not in self.data, "every SET of a cell writes a fresh key"
            self.data[key] = value
            if callback is None:
                return None
            self.pending.append(callback)
            self.most_pending = max(self.most_pending, len(self.pending))
            if len(self.pending) != self.release_at:
                return None
            answered, self.pending = self.pending, []
        for answer in answered:
            answer(None, self.reason)
        return None


def test_a_cell_sets_every_requested_key_once_over_its_client_threads():
    store = FakeReplDict()
    result = pysyncobj_node.run_cell(store, clients=3, pipeline=1, requests=100, max_seconds=30)
    assert (result.completed, result.cut_short, result.error_count) == (100, False, 0)
    assert len(store.data) == 100 and set(store.data.values()) == {"xxx"}
    assert result.latency.count == 100 and result.rps > 0


def test_a_pipelined_client_issues_its_whole_batch_before_it_waits_and_never_more():
    store = FakeReplDict(release_at=16)  # answers only once 16 are pending
    result = pysyncobj_node.run_cell(store, clients=1, pipeline=16, requests=96, max_seconds=30)
    assert (result.completed, result.cut_short) == (96, False)
    assert store.most_pending == 16 and result.latency.count == 96


def test_sets_unanswered_at_the_deadline_are_not_counted_and_the_cell_says_it_was_cut_short():
    store = FakeReplDict(release_at=None)
    result = pysyncobj_node.run_cell(store, clients=2, pipeline=16, requests=64, max_seconds=0.2)
    assert result.cut_short and result.completed == 0
    assert len(store.data) == 32  # each client sent its first batch of 16, then waited


def test_a_sync_set_that_times_out_cuts_the_cell_short_but_a_failed_one_is_an_error():
    class TimesOut(FakeReplDict):
        def set(self, key, value, sync=False, timeout=None, callback=None):
            raise RuntimeError("Timeout")

    class Fails(FakeReplDict):
        def set(self, key, value, sync=False, timeout=None, callback=None):
            raise RuntimeError(2)

    def is_timeout(exc):
        return exc.args == ("Timeout",)
    timed_out = pysyncobj_node.run_cell(TimesOut(), 1, 1, 10, 30, is_timeout)
    assert timed_out.cut_short and timed_out.completed == 0 and not timed_out.errors
    failed = pysyncobj_node.run_cell(Fails(), 1, 1, 10, 30, is_timeout)
    assert not failed.cut_short and failed.completed == 10 and failed.errors == {"2": 10}


def test_failed_callbacks_are_counted_as_errors_by_reason():
    result = pysyncobj_node.run_cell(FakeReplDict(release_at=4, reason=2), 1, 4, 8, 30)
    assert result.completed == 8 and result.errors == {"2": 8}


def test_a_node_is_leader_follower_or_none_by_the_leader_it_knows():
    assert pysyncobj_node.role_of("127.0.0.1:1", "127.0.0.1:1") == "leader"
    assert pysyncobj_node.role_of("127.0.0.1:1", "127.0.0.1:2") == "follower"
    assert pysyncobj_node.role_of("127.0.0.1:1", None) == "none"


def cell(rps, p50=1.0):
    return bench.Cell(rps=rps, p50_ms=p50, p99_ms=2 * p50, cpu_us=0.0, cut_short=False, errors=0)


def test_geomys_is_compared_with_the_faster_pysyncobj_setting_of_each_cell():
    results = {("leader", "set", 1, 1): cell(1000), ("pysyncobj-off-leader", "set", 1, 1): cell(2000),
               ("pysyncobj-2ms-leader", "set", 1, 1): cell(500),
               ("follower", "set", 8, 16): cell(900), ("pysyncobj-2ms-follower", "set", 8, 16): cell(300)}
    rows = {(role, clients, pipeline): value for role, clients, pipeline, _, _, value in bench.comparison_rows(results)}
    assert len(rows) == 2 * 3 * 2  # leader and follower, 1/8/50 clients, -P 1 and 16
    assert rows[("leader", 1, 1)] == 0.5
    assert rows[("follower", 8, 16)] == 3.0  # only one setting measured: compared with it
    assert rows[("leader", 50, 16)] is None


def test_the_comparison_table_says_where_geomys_is_ahead_and_skips_cells_not_measured():
    results = {("leader", "set", 1, 1): cell(1000, 0.9), ("pysyncobj-off-leader", "set", 1, 1): cell(2000, 0.4),
               ("pysyncobj-2ms-leader", "set", 1, 1): cell(500, 3.0),
               ("follower", "set", 50, 16): cell(9000, 40.0)}
    table = bench.comparison_table(results).splitlines()
    assert len(table) == 2 + 2  # header, rule, two measured cells
    assert table[2] == "| via the leader, 1 client, -P 1 | 1,000 | 0.90 | 2,000 | 0.40 | 500 | 3.00 | 0.50 | **no** |"
    assert table[3] == "| via the follower, 50 clients, -P 16 | 9,000 | 40.00 | – | – | – | – | – | – |"
