"""Starting and stopping the `geomys` process: signals, refusals with exit
status 2 and one line on stderr, `python -m geomys`, the loopback default
bind, and options from the environment.
"""

import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.certs import Pki
from tests.fakes import assert_error
from tests.helpers import HOST, RawClient, free_port, geomys_command, wait_until

pytestmark = pytest.mark.integration

EXIT_TIMEOUT = 15


@pytest.fixture
def env(tmp_path):
    """The environment of a server started here: a private HOME, no GEOMYS_* leaking in."""
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GEOMYS_")}
    return dict(clean, HOME=str(home))


def run_to_exit(args, env) -> subprocess.CompletedProcess:
    """Run `geomys ARGS` expecting it to exit on its own; return its status and output."""
    return subprocess.run(geomys_command() + list(args), env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=EXIT_TIMEOUT)


def assert_refused(result: subprocess.CompletedProcess, *mentions) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, "expected one line on stderr, got:\n" + result.stderr
    for word in mentions:
        assert word in lines[0], lines[0]


@pytest.fixture
def spawn(env):
    """Factory: spawn(argv) -> a running Popen answering PING; killed at teardown if still alive."""
    procs = []

    def factory(argv, port):
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)

        def pong():
            if proc.poll() is not None:
                raise AssertionError("geomys exited with %s: %s" % (proc.returncode, proc.stderr.read()))
            try:
                with RawClient(port, timeout=2) as c:
                    return c.call("PING").get("message") == "PONG"
            except OSError:
                return False
        wait_until(pong, timeout=20, interval=0.05, message="geomys on port %d" % port)
        return proc

    yield factory
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_makes_the_server_exit_0(server, sig):
    server.call("SET", key="k", value="v")
    server.proc.send_signal(sig)
    assert server.proc.wait(EXIT_TIMEOUT) == 0
    assert "stopped" in server.log_text()


def test_sigterm_stops_the_server_even_with_clients_connected_and_blocked(server):
    idle, blocked = server.client(), server.client()
    try:
        assert idle.call("PING")["message"] == "PONG"
        blocked.send({"command": "BLPOP", "key": "never", "timeout": 0})
        wait_until(lambda: server.info()["blocked_clients"] == 1, timeout=10, message="a blocked client")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(EXIT_TIMEOUT) == 0
        assert time.monotonic() - started < 10
    finally:
        idle.close()
        blocked.close()


def test_a_busy_port_exits_2_with_one_line_on_stderr(env):
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_to_exit(["--port", str(port)], env)
    assert_refused(result, str(port))


@pytest.mark.parametrize("args, mention", [
    (["--port", "not-a-port"], "port"),
    (["--max_clients", "0"], "max_clients"),
    (["--persistence", "maybe"], "persistence"),
    (["--heartbeat_interval", "5", "--failure_timeout", "6"], "failure_timeout"),
    (["--no_such_option", "1"], "no_such_option"),
    (["--config", "/nonexistent/geomys.conf"], "/nonexistent/geomys.conf"),
    (["--max_memory", "-1"], "max_memory"),
    (["--max_memory", "64xb"], "max_memory"),
], ids=["port", "max_clients", "persistence", "timeouts", "unknown", "missing-config", "negative-max-memory",
        "max-memory-suffix"])
def test_an_invalid_option_exits_2_with_one_line_on_stderr(env, args, mention):
    assert_refused(run_to_exit(args, env), mention)


@pytest.mark.parametrize("fault, mention", [
    ("missing-cert", "missing.crt"),
    ("unreadable-key", "key"),
    ("mismatched-key", "does not match"),
    ("ca-not-pem", "not a PEM file"),
    ("ca-not-pem-cluster", "not a PEM file"),
])
def test_a_bad_tls_file_exits_2_with_one_line_on_stderr(env, tmp_path, fault, mention):
    pki = Pki(tmp_path / "pki")
    leaf = pki.issue("server")
    files = {"--tls_cert_file": leaf.cert_file, "--tls_key_file": leaf.key_file, "--tls_ca_file": pki.ca_file}
    if fault == "missing-cert":
        files["--tls_cert_file"] = str(tmp_path / "missing.crt")
    elif fault == "unreadable-key":
        files["--tls_key_file"] = str(tmp_path)   # a folder: unreadable even for root
    elif fault == "mismatched-key":
        files["--tls_key_file"] = pki.issue("other").key_file
    else:
        files["--tls_ca_file"] = leaf.cert_file + ".txt"
        Path(files["--tls_ca_file"]).write_text("not a certificate\n")
    uses = ["--tls_cluster", "yes", "--bootstrap"] if fault.endswith("cluster") else ["--tls_port", str(free_port())]
    args = ["--port", str(free_port(span=1000)), *uses, *[item for pair in files.items() for item in pair]]
    assert_refused(run_to_exit(args, env), mention)


SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


@pytest.fixture(scope="module")
def public_host() -> str:
    """An IPv4 address of this host outside 127/8, else 0.0.0.0 (every interface)."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
        address = socket.inet_ntoa(answer[20:24])
        if not address.startswith("127."):
            return address
    return "0.0.0.0"


def test_protected_mode_refuses_a_public_bind_without_requirepass(env, public_host):
    for host in sorted({public_host, "0.0.0.0"}):
        assert_refused(run_to_exit(["--host", host, "--port", str(free_port())], env), "requirepass")


@pytest.mark.parametrize("options", [{"protected_mode": False}, {"requirepass": "pw"}],
                         ids=["protected_mode-no", "requirepass"])
def test_a_public_bind_starts_with_protected_mode_off_or_with_requirepass(start_server, public_host, options):
    server = start_server(wait=False, host=public_host, **options)
    expected = socket.inet_aton(public_host)[::-1].hex().upper()  # as /proc/net/tcp writes it

    def listening() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError("geomys exited with %s:\n%s" % (server.proc.returncode, server.log_text()))
        return listening_sockets(server.port) == [expected]
    # Nothing is sent to a public address: listening there and stopping
    # cleanly on SIGTERM is what starting means here.
    wait_until(listening, timeout=20, message="geomys listening on %s:%d" % (public_host, server.port))
    assert server.stop() == 0


def test_python_dash_m_geomys_runs_the_server(spawn):
    port = free_port(span=1000)
    proc = spawn([sys.executable, "-m", "geomys", "--port", str(port)], port)
    with RawClient(port) as c:
        assert c.call("SET", key="k", value="v") == {"status": "OK"}
        assert c.call("INFO")["value"]["node_id"] == port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(EXIT_TIMEOUT) == 0


def listening_sockets(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp[6]) of sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def test_the_server_binds_to_loopback_by_default(server):
    # The config ServerProcess writes has no `host` line, so this is the default.
    assert "host" not in server.options
    assert listening_sockets(server.port) == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert server.info()["address"] == "127.0.0.1:%d" % server.port


def test_options_can_come_from_the_environment(start_server):
    server = start_server(env={"GEOMYS_REQUIREPASS": "from-env"})
    with server.client() as c:
        assert_error(c.call("GET", key="k"), "AUTH_REQUIRED")
        assert c.call("AUTH", value="from-env") == {"status": "OK"}


def test_a_command_line_flag_wins_over_the_config_file(start_server):
    server = start_server(requirepass="from-file", extra_args=["--requirepass", "from-flag"])
    with server.client() as c:
        assert_error(c.call("AUTH", value="from-file"), "AUTH_FAILED")
        assert c.call("AUTH", value="from-flag") == {"status": "OK"}
