"""scripts/cluster.sh as a lab: start a local three-node cluster, break one node, watch it heal.

Runs the script with a temporary DIR and a GEOMYS_BASE_PORT whose three
client ports and their gRPC ports (+1000) are free, with short cluster
timings. Every verb runs on real processes. Teardown signals only the PIDs
the script recorded, and the test's own processes by the PID it started.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import geomys

from tests.helpers import HOST, RawClient, free_port, wait_until

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
# node pid port state role term leader applied
NODE, PID, PORT, STATE, ROLE, TERM, LEADER, APPLIED = range(8)
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


def process_state(pid: int) -> str:
    """The scheduler state letter of a process (R, S, T when stopped, Z), or '' once it is gone."""
    try:
        return Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    return process_state(pid) not in ("", "Z", "X")   # a zombie is gone for our purpose


@pytest.fixture
def run_script(tmp_path):
    base = free_base_port()
    folder = tmp_path / "my-cluster"
    env = dict(os.environ, GEOMYS_BASE_PORT=str(base), GEOMYS_HEARTBEAT_INTERVAL="0.2",
               GEOMYS_FAILURE_TIMEOUT="1", PYTHON=sys.executable,
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("GEOMYS_PORT", None)

    def run(*words: str, timeout: float = 90.0, **more_env: str) -> subprocess.CompletedProcess:
        """Run `cluster.sh WORDS... DIR` (with `more_env` added to its environment)."""
        return subprocess.run(["bash", str(SCRIPT), *words, str(folder)], env=dict(env, **more_env),
                              capture_output=True, text=True, timeout=timeout)
    run.base, run.folder, run.env = base, folder, env
    yield run
    for pid_file in folder.glob("node*.pid"):      # only what the script recorded
        try:
            pid = int(pid_file.read_text())
        except ValueError:
            continue
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def recorded_pids(folder: Path) -> dict[int, int]:
    return {int(f.stem[4:]): int(f.read_text()) for f in folder.glob("node*.pid")}


def started(run_script) -> dict[int, int]:
    """Start the cluster through the script; return the recorded PIDs."""
    result = run_script("start")
    assert result.returncode == 0, result.stdout + result.stderr
    return recorded_pids(run_script.folder)


def status(run_script) -> dict[int, list[str]]:
    result = run_script("status")
    assert result.returncode == 0, result.stdout + result.stderr
    return status_rows(result.stdout)


def status_rows(output: str) -> dict[int, list[str]]:
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            rows[int(fields[0])] = fields
    return rows


def get(port: int, key: str):
    with RawClient(port) as client:
        return client.call("GET", key=key).get("value")


def write_until_accepted(port: int, prefix: str) -> str:
    """SET a new key through `port` until one is acknowledged (NO_LEADER while an election runs)."""
    attempt = iter(range(10**6))

    def acknowledged():
        key = "%s-%d" % (prefix, next(attempt))
        with RawClient(port) as client:
            return key if client.call("SET", key=key, value="v") == {"status": "OK"} else None
    return wait_until(acknowledged, 20, 0.1, "a write through port %d to be acknowledged" % port)


def test_script_starts_shows_and_stops_a_three_node_cluster(run_script):
    result = run_script("start")
    assert result.returncode == 0, result.stdout + result.stderr
    folder = run_script.folder
    assert str(folder) in result.stdout                       # it says where everything lives
    pids = recorded_pids(folder)
    assert sorted(pids) == [1, 2, 3] and all(alive(pid) for pid in pids.values())
    assert all((folder / ("node%d.aof" % n)).exists() for n in (1, 2, 3))   # writethrough, one file each

    rows = status(run_script)
    assert sorted(rows) == [1, 2, 3]
    assert [rows[n][STATE] for n in (1, 2, 3)] == ["alive"] * 3
    assert sorted(row[ROLE] for row in rows.values()) == ["follower", "follower", "leader"]
    assert {row[LEADER] for row in rows.values()} == {"1"} and len({row[TERM] for row in rows.values()}) == 1
    assert [int(rows[n][PORT]) for n in (1, 2, 3)] == [run_script.base + i for i in range(3)]
    assert [int(rows[n][PID]) for n in (1, 2, 3)] == [pids[n] for n in (1, 2, 3)]

    # A second start while it runs is refused and changes nothing.
    again = run_script("start")
    assert again.returncode != 0 and "already running" in again.stderr, again.stdout + again.stderr
    assert recorded_pids(folder) == pids

    # It is a working cluster: a write through node 3 is read back on node 2.
    with RawClient(run_script.base + 2) as client:
        assert client.call("SET", key="from-script", value="yes") == {"status": "OK"}
    wait_until(lambda: get(run_script.base + 1, "from-script") == "yes", 10, 0.05, "the write to reach node 2")

    stopped = run_script("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 10, 0.05, "every recorded PID to be gone")
    assert not list(folder.glob("node*.pid"))
    assert [row[STATE] for row in status(run_script).values()] == ["stopped"] * 3


def test_kill_n_and_start_n_bring_one_node_back_while_the_others_serve(run_script):
    pids = started(run_script)
    base, folder = run_script.base, run_script.folder
    with RawClient(base) as client:
        assert client.call("SET", key="before", value="1") == {"status": "OK"}

    killed = run_script("kill", "1")                        # the leader
    assert killed.returncode == 0, killed.stdout + killed.stderr
    wait_until(lambda: not alive(pids[1]), 10, 0.05, "node 1's process to be gone")
    assert alive(pids[2]) and alive(pids[3])
    again = run_script("kill", "1")
    assert again.returncode != 0 and "not running" in again.stderr, again.stdout + again.stderr

    # The other two elect a leader and keep taking writes, through either of them.
    during = write_until_accepted(base + 2, "during")
    rows = status(run_script)
    assert rows[1][STATE] == "stopped" and rows[1][PID] == "-"
    assert {rows[2][ROLE], rows[3][ROLE]} == {"leader", "follower"}
    new_leader = rows[2][LEADER]
    assert new_leader in ("2", "3") and rows[3][LEADER] == new_leader
    assert (folder / "node1.aof").exists()

    back = run_script("start", "1")
    assert back.returncode == 0, back.stdout + back.stderr
    pid = recorded_pids(folder)[1]
    assert pid != pids[1] and alive(pid)
    rows = status_rows(back.stdout)
    assert (rows[1][STATE], rows[1][ROLE], rows[1][LEADER]) == ("alive", "follower", new_leader)
    assert recorded_pids(folder) == {1: pid, 2: pids[2], 3: pids[3]}   # the others were left running
    # It caught up, and runs on its own data file again.
    wait_until(lambda: get(base, "before") == "1" and get(base, during) == "v", 10, 0.05, "node 1 to catch up")
    with RawClient(base) as client:
        assert client.call("INFO")["value"]["persistence"]["path"] == str(folder / "node1.aof")

    # start N of a node that runs says so and changes nothing.
    twice = run_script("start", "1")
    assert twice.returncode != 0 and "already running" in twice.stderr, twice.stdout + twice.stderr
    assert recorded_pids(folder)[1] == pid and alive(pid)


def test_pause_n_and_resume_n_freeze_and_thaw_one_node(run_script):
    pids = started(run_script)
    base = run_script.base

    paused = run_script("pause", "3")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert process_state(pids[3]) == "T"
    assert status(run_script)[3][STATE] == "paused"
    twice = run_script("pause", "3")
    assert twice.returncode != 0 and "already paused" in twice.stderr, twice.stdout + twice.stderr

    key = write_until_accepted(base, "while-paused")           # nodes 1 and 2 are a majority

    resumed = run_script("resume", "3")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert process_state(pids[3]) not in ("T", "")
    again = run_script("resume", "3")
    assert again.returncode != 0 and "not paused" in again.stderr, again.stdout + again.stderr
    wait_until(lambda: get(base + 2, key) == "v", 20, 0.05, "node 3 to catch up after its pause")
    wait_until(lambda: status(run_script)[3][ROLE] == "follower", 20, 0.1, "node 3 to follow again")

    # stop resumes a paused node first, so it can act on SIGTERM.
    assert run_script("pause", "2").returncode == 0
    stopped = run_script("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 10, 0.05, "every node to be gone")


class Watcher:
    """`cluster.sh watch` running in the background, its output collected by a reader thread."""

    def __init__(self, run_script) -> None:
        self.proc = subprocess.Popen(["bash", str(SCRIPT), "watch", str(run_script.folder)], env=run_script.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def tables(self) -> list[dict[int, list[str]]]:
        """Every complete table drawn so far (a table ends at the line after its third row)."""
        text = "".join(self.lines)
        drawn = text.split("\nnode  pid")[1:]
        return [rows for rows in (status_rows(chunk.split("\n\n")[0]) for chunk in drawn) if len(rows) == 3]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)                   # what Ctrl-C sends
        code = self.proc.wait(15)
        self.reader.join(5)
        return code


def test_watch_redraws_the_table_and_shows_a_new_leader_as_it_happens(run_script):
    started(run_script)
    watcher = Watcher(run_script)
    try:
        first = wait_until(lambda: watcher.tables(), 20, 0.1, "watch to draw its first table")[0]
        assert [first[n][ROLE] for n in (1, 2, 3)] == ["leader", "follower", "follower"]
        assert run_script("kill", "1").returncode == 0

        def new_leader():
            rows = watcher.tables()[-1]
            return (rows[1][STATE] == "stopped" and {rows[2][ROLE], rows[3][ROLE]} == {"leader", "follower"}
                    and int(rows[2][TERM]) > int(first[2][TERM]))
        wait_until(new_leader, 20, 0.1, "watch to show the new leader")
        assert "node 1: alive leader" in "".join(watcher.lines)   # the change log names what changed
        assert watcher.stop() == 0                                 # Ctrl-C ends it cleanly
    finally:
        if watcher.proc.poll() is None:
            watcher.proc.kill()
            watcher.proc.wait(10)


@pytest.mark.parametrize("words", [
    [], ["frobnicate"], ["kill"], ["kill", "4"], ["pause", "0"], ["resume", "x"], ["start", "9"],
    ["kill", "1", "some-dir", "extra"], ["status", "a", "b"],
])
def test_unknown_verbs_and_node_numbers_print_usage_and_exit_2(words):
    result = subprocess.run(["bash", str(SCRIPT), *words], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr, (result.stdout, result.stderr)


def test_no_verb_touches_a_process_the_script_did_not_start(run_script):
    # A process of this test, whose PID is planted in node 2's PID file. It even carries node 2's
    # id on its command line, but not this folder's data file.
    folder = run_script.folder
    folder.mkdir()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-node_id=2",
                                 "-persistence_path=/elsewhere/node2.aof"])
    try:
        (folder / "node2.pid").write_text("%d\n" % stranger.pid)
        for verb in ("kill", "pause", "resume"):
            result = run_script(verb, "2")
            assert result.returncode == 1 and "not running" in result.stderr, (verb, result.stderr)
        assert status(run_script)[2][STATE] == "stopped"
        assert run_script("stop").returncode == 0
        assert alive(stranger.pid) and process_state(stranger.pid) != "T"
    finally:
        stranger.kill()
        stranger.wait(10)


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
    assert sorted(row[ROLE] for row in rows.values()) == ["follower", "follower", "leader"], rows
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
