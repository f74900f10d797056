"""geomys-cli as a user runs it: one-shot commands with exit codes, the REPL over a pipe and a pty, reconnects."""

import contextlib
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.certs import Pki
from tests.helpers import free_port, geomys_command, wait_until

pytestmark = pytest.mark.integration

CLI = geomys_command("geomys-cli")


@pytest.fixture
def cli_env(tmp_path):
    """The environment the CLI runs in: HOME is a temporary folder, so history stays out of the real one."""
    home = tmp_path / "home"
    home.mkdir()
    return dict(os.environ, HOME=str(home), TERM="dumb")


def run_cli(port: int, *words: str, env: dict, stdin: str = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["-port", str(port), *words], input=stdin, capture_output=True, text=True,
                          env=env, timeout=30)


# -- one-shot mode -------------------------------------------------------------------

def test_one_shot_set_prints_ok_and_exits_zero(server, cli_env):
    result = run_cli(server.port, "set", "name", "john doe", env=cli_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")
    assert server.call("GET", key="name")["value"] == "john doe"


def test_one_shot_get_prints_the_bare_value(server, cli_env):
    server.call("SET", key="name", value="john doe")
    result = run_cli(server.port, "get", "name", env=cli_env)
    assert (result.returncode, result.stdout) == (0, "john doe\n")


def test_one_shot_server_error_prints_on_stderr_and_exits_one(server, cli_env):
    server.call("SET", key="name", value="x")
    result = run_cli(server.port, "set", "name", "y", env=cli_env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Server Error: ") and "'name'" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_one_shot_wrong_arity_prints_usage_exits_two_and_sends_nothing(server, cli_env):
    result = run_cli(server.port, "set", "only-key", env=cli_env)
    assert result.returncode == 2
    assert "usage: set KEY VALUE [TTL_MS]" in result.stderr
    assert server.call("EXISTS", key="only-key")["value"] == 0


@pytest.mark.parametrize("spelling", [["-port={port}"], ["--port", "{port}"], ["--port={port}"], ["-p", "{port}"]])
def test_one_shot_accepts_every_port_spelling(server, cli_env, spelling):
    argv = [part.format(port=server.port) for part in spelling]
    result = subprocess.run(CLI + argv + ["incr", "n", "5"], capture_output=True, text=True, env=cli_env,
                            timeout=30)
    assert (result.returncode, result.stdout) == (0, "5\n")


def test_one_shot_info_prints_key_value_lines(server, cli_env):
    result = run_cli(server.port, "info", env=cli_env)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "role: standalone" in lines
    assert "persistence:" in lines and "  mode: none" in lines


def test_one_shot_help_lists_commands_without_a_server(cli_env):
    result = run_cli(free_port(), "help", env=cli_env)
    assert result.returncode == 0
    assert any(line.startswith("blpop KEY TIMEOUT") for line in result.stdout.splitlines())


def test_one_shot_against_a_dead_port_exits_one_with_one_line_on_stderr(cli_env):
    port = free_port()
    result = run_cli(port, "ping", env=cli_env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["Server Error: could not connect to 127.0.0.1:%d (Connection refused)"
                                          % port]


def test_one_shot_password_option_authenticates(start_server, cli_env):
    server = start_server(requirepass="secret")
    assert run_cli(server.port, "set", "k", "v", env=cli_env).returncode == 1
    result = run_cli(server.port, "-a", "secret", "set", "k", "v", env=cli_env)
    assert (result.returncode, result.stdout) == (0, "OK\n")


def test_one_shot_over_tls_presents_the_client_certificate_given(start_server, cli_env, tmp_path):
    pki = Pki(tmp_path / "pki")
    tls_port = free_port()
    server = start_server(tls_port=tls_port, **pki.server_options(pki.issue("server"), tls_auth_clients="yes"))
    client = pki.issue("client")
    tls = ["--tls", "--cacert", pki.ca_file]
    result = run_cli(tls_port, *tls, "--cert", client.cert_file, "--key", client.key_file, "set", "k", "v",
                     env=cli_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")
    assert server.call("GET", key="k")["value"] == "v"
    refused = run_cli(tls_port, *tls, "get", "k", env=cli_env)   # no client certificate
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused
    bad_file = run_cli(tls_port, "--tls", "--cacert", str(tmp_path / "none.pem"), "ping", env=cli_env)
    assert bad_file.returncode == 2 and "none.pem" in bad_file.stderr


def test_python_dash_m_runs_the_cli(server, cli_env):
    result = subprocess.run([sys.executable, "-m", "geomys.cli", "-port", str(server.port), "ping"],
                            capture_output=True, text=True, env=cli_env, timeout=30)
    assert (result.returncode, result.stdout) == (0, "PONG\n")


# -- the REPL over a pipe -----------------------------------------------------------------

def test_repl_transcript_over_a_pipe(server, cli_env):
    script = "\n".join([
        'set name "john doe"',
        "get name",
        "SET name again",
        r'echo "say \"hi\""\ to\ them',
        "incr visits 5",
        "push queue a",
        "lpop queue",
        "blpop queue 0.1",
        "get",
        "xyz 1 2",
        'set broken "quote',
        "",
        "help get",
        "exists name",
        "del name",
    ]) + "\n"
    result = run_cli(server.port, env=cli_env, stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:8] == [
        "Server: OK",
        "Server: john doe",
        "Server Error: key 'name' already exists",
        'Server: say "hi" to them',
        "Server: 5",
        "Server: OK",
        "Server: a",
        "Server Error: no element arrived in list 'queue' within 0.1s",
    ]
    assert lines[8] == "Error: usage: get KEY"
    assert lines[9] == "Server Error: unknown command 'xyz'"
    assert lines[10].startswith("Error: cannot parse the line: ")
    assert lines[11].startswith("get KEY ")
    assert lines[12:] == ["Server: 1", "Server: 1"]


def test_repl_info_prints_an_indented_map_under_server(server, cli_env):
    lines = run_cli(server.port, env=cli_env, stdin="info\n").stdout.splitlines()
    assert lines[0] == "Server:"
    assert "  role: standalone" in lines
    assert "  persistence:" in lines and "    mode: none" in lines


def test_repl_help_lists_every_command(server, cli_env):
    lines = run_cli(server.port, env=cli_env, stdin="help\n").stdout.splitlines()
    for usage in ("set KEY VALUE [TTL_MS]", "incr KEY [OFFSET]", "brpop KEY TIMEOUT", "del KEY", "compact"):
        assert any(line.startswith(usage + " ") for line in lines), usage


def test_repl_quit_stops_reading_and_exits_zero(server, cli_env):
    result = run_cli(server.port, env=cli_env, stdin="ping\nquit\nset after quit\n")
    assert (result.returncode, result.stdout) == (0, "Server: PONG\n")
    assert server.call("EXISTS", key="after")["value"] == 0


def test_repl_auth_command_authenticates_the_session(start_server, cli_env):
    server = start_server(requirepass="secret")
    result = run_cli(server.port, env=cli_env, stdin="get k\nauth wrong\nauth secret\nset k v\n")
    assert result.stdout.splitlines() == [
        "Server Error: authentication required: send AUTH first",
        "Server Error: invalid password",
        "Server: OK",
        "Server: OK",
    ]


def test_repl_against_a_dead_port_reports_each_command_and_exits_zero_at_eof(cli_env):
    port = free_port()
    result = run_cli(port, env=cli_env, stdin="ping\nget k\n")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "Server Error: could not connect to 127.0.0.1:%d (Connection refused)" % port] * 2
    assert "Traceback" not in result.stderr


class LineReader:
    """Reads a process's stdout lines on a thread, so a test can wait for each with a deadline."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 10.0) -> str:
        return self.lines.get(timeout=timeout)


@contextlib.contextmanager
def piped_repl(port: int, env: dict):
    """geomys-cli's REPL on pipes: yields (process, LineReader of its stdout).

    The block must close stdin; on the way out the REPL must have exited 0
    without a traceback, and is killed (by PID) if it is still running.
    """
    proc = subprocess.Popen(CLI + ["-port", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc, LineReader(proc.stdout)
        assert proc.wait(10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_repl_reconnects_after_a_server_restart_and_sends_the_command_once(server, start_server, cli_env):
    with piped_repl(server.port, cli_env) as (proc, reader):
        proc.stdin.write("set before restart\n")
        proc.stdin.flush()
        assert reader.next() == "Server: OK"
        server.stop()
        restarted = start_server(port=server.port)
        proc.stdin.write("incr after\n")
        proc.stdin.flush()
        assert reader.next() == "Server: 1"
        assert restarted.call("GET", key="after")["value"] == "1"
        restarted.stop()
        proc.stdin.write("ping\n")
        proc.stdin.flush()
        assert reader.next().startswith("Server Error: could not connect to 127.0.0.1:%d" % server.port)
        start_server(port=server.port)
        proc.stdin.write("ping\n")
        proc.stdin.close()
        assert reader.next() == "Server: PONG"


def test_ctrl_c_during_a_blocking_command_abandons_it_and_the_repl_goes_on(server, cli_env):
    with piped_repl(server.port, cli_env) as (proc, reader):
        proc.stdin.write("blpop jobs 0\n")
        proc.stdin.flush()
        wait_until(lambda: server.info()["blocked_clients"] == 1, timeout=10, message="the pop to block")
        proc.send_signal(signal.SIGINT)
        assert reader.next() == "(interrupted)"
        wait_until(lambda: server.info()["blocked_clients"] == 0, timeout=10, message="the waiter to leave")
        server.call("PUSH", key="jobs", value="kept")
        proc.stdin.write("lpop jobs\n")
        proc.stdin.close()
        assert reader.next() == "Server: kept"


# -- the REPL on a terminal ------------------------------------------------------------------

class Terminal:
    """The CLI on a pseudo-terminal: what it writes is collected; waits are bounded."""

    def __init__(self, argv: list[str], env: dict) -> None:
        import pty
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.output = b""

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, text: bytes, timeout: float = 10.0) -> None:
        """Wait until `text` has appeared in the output since the last expect, then consume up to it."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for %r; output so far: %r" % (text, self.output))
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the process closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError("terminal closed while waiting for %r: %r" % (text, self.output))
                self.output += chunk
        self.output = self.output[self.output.index(text) + len(text):]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def waiting_in_select(pid: int) -> bool:
    with open("/proc/%d/wchan" % pid) as wchan:
        return any(word in wchan.read() for word in ("poll", "select"))


@pytest.mark.skipif(not os.path.exists("/proc/self/wchan"), reason="needs Linux /proc/PID/wchan")
def test_repl_on_a_terminal_prompts_clears_the_line_on_ctrl_c_and_keeps_history(server, cli_env):
    term = Terminal(CLI + ["-port", str(server.port)], cli_env)
    try:
        term.expect(b">> ")
        term.write(b"set k v\n")
        term.expect(b"Server: OK")
        term.expect(b">> ")
        term.write(b"get half-typed")
        term.expect(b"get half-typed")
        # CPython's readline loop only notices a signal that interrupts its select(),
        # so Ctrl-C is sent once the CLI waits there, as it would be for a human.
        wait_until(lambda: waiting_in_select(term.proc.pid), timeout=10, message="the CLI to wait for keys")
        term.proc.send_signal(signal.SIGINT)
        term.expect(b">> ")
        term.write(b"get k\n")
        term.expect(b"Server: v")
        term.expect(b">> ")
        term.write(b"\x04")  # Ctrl-D at an empty prompt
        assert term.proc.wait(10) == 0
    finally:
        term.close()
    history = os.path.join(cli_env["HOME"], ".geomys", "cli_history")
    lines = open(history).read().splitlines()
    assert "set k v" in lines and "get k" in lines
    assert not any("half-typed" in line for line in lines)


def test_one_shot_consistent_reads_on_a_standalone_server_like_any_read(server, cli_env):
    server.call("SET", key="name", value="john doe")
    result = run_cli(server.port, "--consistent", "get", "name", env=cli_env)
    assert (result.returncode, result.stdout) == (0, "john doe\n")
