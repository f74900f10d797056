"""Test support: start real geomys processes on free loopback ports and talk to them.

Every wait here is bounded by a monotonic deadline; processes are stopped by
the PID this module started and nothing else.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import msgpack

HOST = "127.0.0.1"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> object:
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))
        time.sleep(interval)


def free_port(span: int = 0) -> int:
    """Return a loopback port that is free now (and, with span, so is port + span)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if not span:
            return port
        if port + span <= 65535:
            with socket.socket() as other:
                try:
                    other.bind((HOST, port + span))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port pair found")


def geomys_command(name: str = "geomys") -> list[str]:
    """The console script installed beside this interpreter, else `python -m`."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"geomys": "geomys", "geomys-cli": "geomys.cli", "geomys-benchmark": "geomys.benchmark"}[name]
    return [sys.executable, "-m", module]


class RawClient:
    """A minimal MessagePack client over one TCP connection, independent of geomys.Client."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.unpacker = msgpack.Unpacker(raw=False)

    def send(self, *requests: dict) -> None:
        self.sock.sendall(b"".join(msgpack.packb(r, use_bin_type=True) for r in requests))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> dict:
        """Read one reply; raise EOFError if the server closed the connection first."""
        for reply in self.unpacker:
            return reply
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("connection closed by the server")
            self.unpacker.feed(data)
            for reply in self.unpacker:
                return reply

    def call(self, command: str, **fields) -> dict:
        self.send({"command": command, **fields})
        return self.read()

    def is_closed_by_server(self, timeout: float = 5.0) -> bool:
        """Tell whether the server closes this connection within `timeout` (no more replies)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_until_closed(client: RawClient, limit: int = 100) -> list:
    """Read replies until the server closes the connection (at most `limit`)."""
    replies = []
    try:
        while len(replies) < limit:
            replies.append(client.read())
    except (EOFError, ConnectionResetError):
        return replies
    raise AssertionError("the server kept the connection open after %d replies" % limit)


def frame_of_size(size: int, **fields) -> bytes:
    """A SET request padded with a filler value to exactly `size` bytes."""
    for pad in range(size, -1, -1):
        frame = msgpack.packb({"command": "SET", "key": "k", "value": "x" * pad, **fields})
        if len(frame) == size:
            return frame
    raise AssertionError("no frame of %d bytes" % size)


def process_status(pid: int, field: str) -> int:
    """A number from /proc/PID/status: `Threads`, or a memory figure in kB such as `VmRSS` or `VmHWM`."""
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def process_threads(pid: int) -> int:
    """How many threads process `pid` runs now."""
    return process_status(pid, "Threads")


class ServerProcess:
    """One `geomys` process started by a test, with its own config file and log."""

    def __init__(self, workdir: Path, port: Optional[int] = None, command: Optional[list] = None,
                 **options) -> None:
        """`command` replaces the installed `geomys` (the single executable, say)."""
        self.command = command or geomys_command()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(span=1000)
        self.options = {"port": self.port, "log_level": "INFO", **options}
        self.config_path = self.workdir / ("geomys-%d.conf" % self.port)
        self.log_path = self.workdir / ("geomys-%d.log" % self.port)
        self.proc: Optional[subprocess.Popen] = None

    def start(self, wait: bool = True, extra_args=(), env=None,
              preexec_fn: Optional[Callable[[], None]] = None) -> "ServerProcess":
        """Write the config file and start the process; `preexec_fn` runs in the child before exec.

        (`preexec_fn` is how a test puts a resource limit on the server alone.)
        """
        lines = ["%s = %s" % (k, _conf_value(v)) for k, v in self.options.items() if v is not None]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.log = open(self.log_path, "ab")
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("GEOMYS_PORT", None)
        self.proc = subprocess.Popen(
            self.argv() + ["--config", str(self.config_path), *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
            preexec_fn=preexec_fn)
        if wait:
            self.wait_ready()
        return self

    def argv(self) -> list[str]:
        """The command that starts the server (a subclass may run it under another uid)."""
        return self.command

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until a PING gets PONG (failing early if the process died)."""
        def pong():
            if self.proc.poll() is not None:
                raise AssertionError("geomys exited with %s:\n%s" % (self.proc.returncode, self.log_text()))
            try:
                with RawClient(self.port, timeout=2) as client:
                    return client.call("PING").get("message") == "PONG"
            except OSError:
                return False
        wait_until(pong, timeout, 0.05, "geomys on port %d to answer PING" % self.port)

    def client(self, timeout: float = 10.0) -> RawClient:
        return RawClient(self.port, timeout)

    def call(self, command: str, **fields) -> dict:
        with self.client() as client:
            return client.call(command, **fields)

    def info(self) -> dict:
        return self.call("INFO")["value"]

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """kill -9 the process this object started."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.kill()
        if getattr(self, "log", None):
            self.log.close()


def connected_clients(server: ServerProcess) -> int:
    """The server's count of client connections, the INFO call's own included."""
    return server.info()["connected_clients"]


def wait_only_info_connection(server: ServerProcess) -> None:
    """Wait until the only client the server counts is the INFO call asking.

    A connection a test just closed is counted until its handler thread has
    seen the end of it, so counts are compared only once they settled.
    """
    wait_until(lambda: connected_clients(server) == 1, timeout=10,
               message="the server to count only the INFO connection")


def _conf_value(value) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return str(value)
