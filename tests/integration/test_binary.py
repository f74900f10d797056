"""The single executable (scripts/build_binary.sh) on a machine with nothing installed.

Built once per test session (about a minute), copied into an empty folder
outside the checkout and run as `env -i PATH=/usr/bin:/bin HOME=<empty>`:
no virtual environment, no Python packages, no GEOMYS_* variables. It must
report its version, serve `geomys cli`, form a three-node cluster, keep
writethrough data over a restart, run the benchmark and stop on SIGTERM with 0.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import geomys
from tests.helpers import ServerProcess, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


class Machine:
    """The copied executable and an empty home folder, run with a clean environment."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary, self.home = binary, home

    def command(self, name: str = "geomys") -> list:
        """The prefix that runs the executable (or a link to it called `name`) with a clean environment."""
        program = self.binary if name == "geomys" else self.binary.parent / name
        return ["env", "-i", "PATH=/usr/bin:/bin", "HOME=%s" % self.home, str(program)]

    def run(self, *args: str, name: str = "geomys", timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(name) + list(args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.binary.parent)


@pytest.fixture(scope="session")
def machine(tmp_path_factory) -> Machine:
    build = tmp_path_factory.mktemp("binary-build")
    env = dict(os.environ, PYTHON=sys.executable, DIST_DIR=str(build / "dist"), WORK_DIR=str(build / "work"))
    result = subprocess.run(["bash", str(ROOT / "scripts" / "build_binary.sh")], env=env, capture_output=True,
                            text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = tmp_path_factory.mktemp("empty-vm")
    assert not any(folder.iterdir()) and ROOT not in folder.parents
    binary = folder / "geomys"
    shutil.copy2(build / "dist" / "geomys", binary)
    home = tmp_path_factory.mktemp("empty-home")
    return Machine(binary, home)


@pytest.fixture
def start_node(machine, tmp_path):
    """Factory: start_node(**options) -> a ServerProcess running the executable; killed at teardown."""
    started = []

    def factory(**options) -> ServerProcess:
        node = ServerProcess(tmp_path / ("node%d" % len(started)), command=machine.command(), **options)
        started.append(node)
        return node.start()

    yield factory
    for node in started:
        node.cleanup()


def test_version(machine):
    result = machine.run("--version")
    assert result.returncode == 0 and result.stdout.strip() == "geomys %s" % geomys.__version__


def test_geomys_cli_sets_and_gets_on_a_server_of_the_executable(machine, start_node):
    node = start_node()
    assert node.info()["version"] == geomys.__version__
    port = str(node.port)
    assert machine.run("cli", "-port", port, "set", "greeting", "hello world").returncode == 0
    result = machine.run("cli", "-port", port, "get", "greeting")
    assert result.returncode == 0 and "hello world" in result.stdout
    assert node.stop() == 0


def test_called_by_the_name_geomys_cli_it_is_the_client(machine, start_node):
    node = start_node()
    link = machine.binary.parent / "geomys-cli"
    if not link.exists():
        link.symlink_to(machine.binary.name)
    assert machine.run("-port", str(node.port), "incr", "visits", name="geomys-cli").stdout.strip().endswith("1")
    assert node.stop() == 0


def test_the_benchmark_runs_from_the_executable(machine, start_node):
    node = start_node()
    result = machine.run("benchmark", "-p", str(node.port), "-t", "ping,set", "-n", "2000", "-c", "4",
                         "--procs", "2", "--csv")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()
    assert rows[0].startswith("test,rps,") and rows[0].endswith(",errors") and len(rows) == 3, result.stdout
    for row in rows[1:]:   # requests per second, and no errors
        assert float(row.split(",")[1]) > 0 and row.split(",")[-1] == "0", result.stdout
    assert node.stop() == 0


def test_a_three_node_cluster_of_the_executable_replicates_a_write_to_every_node(machine, start_node):
    timings = dict(heartbeat_interval=0.2, failure_timeout=1)
    first = start_node(node_id=1, bootstrap=True, **timings)
    join = "127.0.0.1:%d" % (first.port + 1000)
    nodes = [first] + [start_node(node_id=n, join=join, **timings) for n in (2, 3)]
    wait_until(lambda: sorted(node.info()["role"] for node in nodes) == ["follower", "follower", "leader"],
               30, 0.1, "one leader and two followers")
    assert machine.run("cli", "-port", str(nodes[2].port), "set", "shared", "everywhere").returncode == 0
    for node in nodes:
        wait_until(lambda: node.call("GET", key="shared").get("value") == "everywhere", 20, 0.05,
                   "the write on node %s" % node.options["node_id"])
    assert [node.stop() for node in reversed(nodes)] == [0, 0, 0]


def test_a_writethrough_restart_keeps_the_data(machine, start_node, tmp_path):
    path = machine.home / "data" / "geomys.aof"
    port = free_port(span=1000)
    node = start_node(port=port, persistence="writethrough", persistence_path=path)
    for i in range(50):
        assert node.call("SET", key="k%d" % i, value="v%d" % i)["status"] == "OK"
    assert node.stop() == 0
    again = start_node(port=port, persistence="writethrough", persistence_path=path)
    assert [again.call("GET", key="k%d" % i).get("value") for i in range(50)] == ["v%d" % i for i in range(50)]
    assert again.stop() == 0


def test_deploy_figures_reports_parsable_figures_of_the_executable(machine, tmp_path):
    output = tmp_path / "deploy.md"
    output.write_text("prose\n\n<!-- deploy_figures:begin -->\nold\n<!-- deploy_figures:end -->\n")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "deploy_figures.py"), "--binary",
                          str(machine.binary), "--keys", "2000", "--starts", "1", "--output", str(output)],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    text = output.read_text()
    assert text.startswith("prose\n") and "old" not in text
    size = re.search(r"^\| size of dist/geomys \| ([\d.]+) MiB \|", text, re.M)
    assert size and float(size.group(1)) == pytest.approx(machine.binary.stat().st_size / (1 << 20), abs=0.05)
    start = re.search(r"^\| start to first PING, dist/geomys: median of 1 \| ([\d.]+) s", text, re.M)
    assert start and float(start.group(1)) > 0
    cluster = re.search(r"^\| idle RSS, each node of a three-node cluster \| ([\d.]+) MiB / ([\d.]+) MiB / "
                        r"([\d.]+) MiB \|", text, re.M)
    assert cluster and all(float(rss) > 1 for rss in cluster.groups())
    ooms = re.findall(r"^\| max_memory 64\.0 MiB, \d+-byte values written until OOM: .*\(([\d,]+) keys\)", text,
                      re.M)
    assert len(ooms) == 2 and all(int(keys.replace(",", "")) > 0 for keys in ooms)
