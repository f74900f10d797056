"""Running under systemd: the unit file, the readiness messages, and start-up refusals.

The notify messages are read from a Unix datagram socket the test opens and
names in NOTIFY_SOCKET, as systemd does. `systemd-analyze verify` checks the
unit where it exists (the test installs Debian's systemd package if it can).
"""

import configparser
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, free_port, geomys_command

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parents[2] / "scripts" / "systemd" / "geomys.service"


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    """The systemd-analyze command, installed from Debian's systemd package if missing."""
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "systemd"],
                       capture_output=True, env=env, timeout=600)
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed and Debian's systemd package could not be installed "
                    "(not root, or no apt-get)")
    return found


def unit_settings() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    return parser


def test_the_unit_passes_systemd_analyze_verify(systemd_analyze, tmp_path):
    # verify also checks that ExecStart's program exists: point it at this checkout's geomys.
    unit = tmp_path / "geomys.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/geomys", geomys_command()[0]))
    result = subprocess.run([systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_the_unit_notifies_restarts_and_writes_only_its_state_folder():
    service = unit_settings()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].split() == ["/usr/local/bin/geomys", "--config", "/etc/geomys/geomys.conf"]
    assert service["Restart"] == "on-failure" and int(service["TimeoutStopSec"]) > 0
    assert service["DynamicUser"] == "yes" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes" and service["StateDirectory"] == "geomys"
    assert "ReadWritePaths" not in service
    unit = unit_settings()["Unit"]
    assert int(unit["StartLimitBurst"]) > 0 and int(unit["StartLimitIntervalSec"]) > 0


@pytest.fixture
def notify_socket(tmp_path):
    """A Unix datagram socket in the role of systemd's; yields (address, socket)."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(20)
    yield address, sock
    sock.close()


def fields_of(datagram: bytes) -> dict:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_ready_is_sent_once_clients_are_served_and_stopping_on_sigterm(tmp_path, notify_socket):
    address, sock = notify_socket
    server = ServerProcess(tmp_path / "node").start(wait=False, env={"NOTIFY_SOCKET": address})
    try:
        ready = fields_of(sock.recv(4096))
        assert ready["READY"] == "1"
        assert str(server.port) in ready["STATUS"]
        assert server.call("PING")["message"] == "PONG"   # at once: no wait after READY=1
        server.proc.send_signal(signal.SIGTERM)
        assert fields_of(sock.recv(4096)) == {"STOPPING": "1"}
        assert server.proc.wait(20) == 0
    finally:
        server.cleanup()


def test_an_abstract_notify_socket_works_too(tmp_path):
    name = "geomys-test-%d" % os.getpid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(20)
        server = ServerProcess(tmp_path / "node").start(wait=False, env={"NOTIFY_SOCKET": "@" + name})
        try:
            assert fields_of(sock.recv(4096))["READY"] == "1"
            assert server.stop() == 0
        finally:
            server.cleanup()


def test_a_server_without_notify_socket_runs_as_before(tmp_path):
    server = ServerProcess(tmp_path / "node").start(env={"NOTIFY_SOCKET": ""})
    try:
        assert server.call("PING")["message"] == "PONG" and server.stop() == 0
    finally:
        server.cleanup()


def without_root_powers() -> list:
    """A command prefix under which even root obeys file permissions (util-linux's setpriv)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv, which could make a folder unwritable to root")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.parametrize("layout", ["parent-is-a-file", "path-is-a-folder", "unwritable"])
def test_a_broken_data_folder_is_one_line_and_a_nonzero_exit_touching_nothing(tmp_path, notify_socket, layout):
    address, sock = notify_socket
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_bytes(b"data of another program")
    prefix = []
    if layout == "parent-is-a-file":
        path = data / "keep" / "persistence.db"
    elif layout == "path-is-a-folder":
        path = data
    else:
        path = data / "keep"   # an existing file in a folder the server may not write to
        prefix = without_root_powers()
        data.chmod(0o555)
        path.chmod(0o444)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    try:
        result = subprocess.run(
            prefix + geomys_command() + ["--port", str(free_port(span=1000)), "--persistence", "writethrough",
                                         "--persistence_path", str(path)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env=dict(os.environ, HOME=str(tmp_path), NOTIFY_SOCKET=address))
    finally:
        data.chmod(0o755)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], result.stderr
    assert lines[0].endswith({"parent-is-a-file": "is not a folder", "path-is-a-folder": "Is a directory",
                              "unwritable": "Permission denied"}[layout])
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in data.iterdir()) == ["keep"]   # no lock file, no temporary file left
    sock.settimeout(0.5)
    with pytest.raises(socket.timeout):   # never READY: systemd sees a failed start
        sock.recv(4096)
