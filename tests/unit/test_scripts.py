"""The pure parts of the scripts in scripts/: reading py-spy's output, summarising fault figures.

The scripts' end-to-end runs are in tests/integration/test_bench_scripts.py
(sampling with py-spy and the long fault run are not part of the test suite).
"""

import importlib.util
import json
import sys
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
