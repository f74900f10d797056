"""scripts/cluster.sh: start a local three-node cluster, show its status, stop it.

Runs the script with a temporary DIR and a GEOMYS_BASE_PORT whose three
client ports and their gRPC ports (+1000) are free. Teardown signals only the
PIDs the script recorded.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import geomys

from tests.helpers import HOST, RawClient, free_port, wait_until

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
MAKE_CERTS = SCRIPT.parent / "make_certs.py"


def free_base_port() -> int:
    """A port P such that P, P+1, P+2, P+100..P+102 (TLS) and P+1000..P+1002 are all free now."""
    for _ in range(200):
        base = free_port(span=1000)
        if base + 1002 > 65535:
            continue
        sockets = []
        try:
            for port in (base + 1, base + 2, base + 100, base + 101, base + 102, base + 1001, base + 1002):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free block of ports found")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose.
    try:
        return Path("/proc/%d/stat" % pid).read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def run_script(tmp_path):
    base = free_base_port()
    folder = tmp_path / "my-cluster"
    env = dict(os.environ, GEOMYS_BASE_PORT=str(base), GEOMYS_HEARTBEAT_INTERVAL="0.2",
               GEOMYS_FAILURE_TIMEOUT="1", PYTHON=sys.executable,
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("GEOMYS_PORT", None)

    def run(action: str, timeout: float = 90.0, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), action, str(folder)], env=dict(env, **more_env),
                              capture_output=True, text=True, timeout=timeout)
    run.base, run.folder = base, folder
    yield run
    for pid_file in folder.glob("node*.pid"):      # only what the script recorded
        try:
            pid = int(pid_file.read_text())
        except ValueError:
            continue
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def status_rows(output: str) -> dict[int, list[str]]:
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            rows[int(fields[0])] = fields
    return rows


def test_script_starts_shows_and_stops_a_three_node_cluster(run_script):
    started = run_script("start")
    assert started.returncode == 0, started.stdout + started.stderr
    folder = run_script.folder
    assert str(folder) in started.stdout                      # it says where everything lives
    pids = {n: int((folder / ("node%d.pid" % n)).read_text()) for n in (1, 2, 3)}
    assert all(alive(pid) for pid in pids.values())
    assert all((folder / ("node%d.aof" % n)).exists() for n in (1, 2, 3))   # writethrough, one file each

    status = run_script("status")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = status_rows(status.stdout)
    assert sorted(rows) == [1, 2, 3], status.stdout
    roles = sorted(row[3] for row in rows.values())
    assert roles == ["follower", "follower", "leader"], status.stdout
    leaders = {row[5] for row in rows.values()}
    terms = {row[4] for row in rows.values()}
    assert leaders == {"1"} and len(terms) == 1, status.stdout
    assert [int(rows[n][2]) for n in (1, 2, 3)] == [run_script.base + i for i in range(3)]

    # A second start while it runs is refused and changes nothing.
    again = run_script("start")
    assert again.returncode != 0 and "already running" in again.stderr, again.stdout + again.stderr
    assert {n: int((folder / ("node%d.pid" % n)).read_text()) for n in (1, 2, 3)} == pids

    # It is a working cluster: a write through node 3 is read back on node 2.
    with RawClient(run_script.base + 2) as client:
        assert client.call("SET", key="from-script", value="yes") == {"status": "OK"}

    def replicated():
        with RawClient(run_script.base + 1) as client:
            return client.call("GET", key="from-script").get("value") == "yes"
    wait_until(replicated, 10, 0.05, "the write to reach node 2")

    stopped = run_script("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 10, 0.05, "every recorded PID to be gone")
    assert not list(folder.glob("node*.pid"))

    after = run_script("status")
    assert sorted(row[3] for row in status_rows(after.stdout).values()) == ["stopped"] * 3, after.stdout


def test_script_with_a_folder_of_certificates_starts_a_tls_cluster(run_script, tmp_path):
    certs = tmp_path / "certs"
    made = subprocess.run([sys.executable, str(MAKE_CERTS), str(certs)], capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    assert "NOT FOR PRODUCTION" in made.stderr
    started = run_script("start", GEOMYS_TLS_DIR=str(certs))
    assert started.returncode == 0, started.stdout + started.stderr
    assert "mutual TLS" in started.stdout
    rows = status_rows(run_script("status").stdout)
    assert sorted(row[3] for row in rows.values()) == ["follower", "follower", "leader"], rows
    # Clients reach every node over TLS, on its client port + 100, with the throwaway CA.
    for node in (1, 2, 3):
        with geomys.Client(HOST, run_script.base + node - 1 + 100, ssl=True, ssl_ca_certs=str(certs / "ca.pem"),
                           ssl_certfile=str(certs / "client.crt"), ssl_keyfile=str(certs / "client.key"),
                           timeout=10) as client:
            info = client.info()
            assert (info["tls"]["clients"], info["tls"]["cluster"]) == (True, True), info["tls"]
            assert client.incr("over-tls") >= node
    stopped = run_script("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_script_refuses_a_folder_that_lacks_a_node_certificate(run_script, tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("")
    result = run_script("start", GEOMYS_TLS_DIR=str(tmp_path / "certs"))
    assert result.returncode == 2 and "node1.crt" in result.stderr, result.stderr
    assert not list(run_script.folder.glob("node*.pid"))


def test_script_without_an_action_prints_usage():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage" in result.stderr
