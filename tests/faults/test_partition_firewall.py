"""The partition firewall itself (tests/faults/partition.py), on small processes under three uids.

Each "node" is an echo server on its "gRPC" port running under its uid, plus
a second echo server of node A on its "client" port. Probes are short
processes under a node's uid that open a connection and wait for their byte
to come back; callers are processes that keep one connection open, as gRPC
channels do, and send a byte on it whenever asked. The cut must stop every
call between A and the others, both ways, on new connections and on open
ones, and nothing else; the heal must let them through again.
"""

import socket
import subprocess
import sys

import pytest

from tests.faults.partition import Endpoint, Firewall, UidReservation
from tests.helpers import HOST, free_port, wait_until

pytestmark = pytest.mark.integration

PROBE_TIMEOUT = 2.0
RECOVERY_TIMEOUT = 20.0        # an open connection resumes on TCP's next retransmission after the heal

ECHO = """
import socket, sys, threading
server = socket.create_server((%r, int(sys.argv[1])))
def echo(conn):
    with conn:
        data = conn.recv(16)
        while data:
            conn.sendall(data)
            data = conn.recv(16)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
""" % HOST

PROBE = """
import socket, sys
try:
    with socket.create_connection((%r, int(sys.argv[1])), timeout=%r) as conn:
        conn.sendall(b"x")
        sys.exit(0 if conn.recv(1) == b"x" else 1)
except OSError:
    sys.exit(1)
""" % (HOST, PROBE_TIMEOUT)

CALLER = """
import socket, sys
conn = socket.create_connection((%r, int(sys.argv[1])), timeout=%r)
for _ in sys.stdin:
    try:
        conn.sendall(b"x")
        print("ok" if conn.recv(16) else "closed", flush=True)
    except OSError:
        print("cut", flush=True)
""" % (HOST, PROBE_TIMEOUT)


def as_uid(uid: int, code: str, *args) -> list[str]:
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", sys.executable, "-I", "-S", "-c", code,
            *args]


def listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


class Caller:
    """A process under `uid` holding one connection to `port` open; `call` sends a byte and says if it came back."""

    def __init__(self, uid: int, port: int) -> None:
        self.proc = subprocess.Popen(as_uid(uid, CALLER, str(port)), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def call(self) -> bool:
        """Bounded by the caller's own socket timeout (PROBE_TIMEOUT); a dead caller answers False."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def three_uids(nftables):
    reservation = UidReservation(3)
    yield reservation.uids
    reservation.release()


def test_a_cut_stops_the_cut_nodes_calls_both_ways_and_spares_client_ports_and_the_other_pair(three_uids):
    a, b, c = three_uids
    ports = {name: free_port() for name in ("a", "b", "c", "a_client")}
    servers = [subprocess.Popen(as_uid(uid, ECHO, str(ports[name])))
               for name, uid in (("a", a), ("b", b), ("c", c), ("a_client", a))]
    callers: dict = {}
    firewall = Firewall()
    # (probe's uid, port it calls) -> whether the call must go through during the cut
    calls = {(a, ports["b"]): False, (a, ports["c"]): False, (b, ports["a"]): False, (c, ports["a"]): False,
             (b, ports["c"]): True, (c, ports["b"]): True, (b, ports["a_client"]): True,
             (c, ports["a_client"]): True}
    # the same on connections opened before the cut: A calling B, B calling A, C calling B
    open_calls = {(a, ports["b"]): False, (b, ports["a"]): False, (c, ports["b"]): True}

    def new_connections() -> dict:
        probes = {call: subprocess.Popen(as_uid(call[0], PROBE, str(call[1]))) for call in calls}
        return {call: probe.wait(5 * PROBE_TIMEOUT + 10) == 0 for call, probe in probes.items()}

    def open_connections() -> dict:
        return {call: caller.call() for call, caller in callers.items()}
    try:
        wait_until(lambda: all(listening(port) for port in ports.values()), 20, 0.05, "the echo servers to listen")
        callers.update({call: Caller(*call) for call in open_calls})
        before = {**{("new", *call): went for call, went in new_connections().items()},
                  **{("open", *call): went for call, went in open_connections().items()}}
        firewall.isolate(Endpoint(a, ports["a"]), [Endpoint(b, ports["b"]), Endpoint(c, ports["c"])])
        during, during_open = new_connections(), open_connections()
        dropped = firewall.heal()
        after = new_connections()
        wait_until(lambda: all(open_connections().values()), RECOVERY_TIMEOUT, 0,
                   "the connections open across the cut to carry bytes again")
    finally:
        firewall.heal()
        for caller in callers.values():
            caller.close()
        for server in servers:
            server.kill()
            server.wait(10)
    assert all(before.values()), "calls that failed before the cut: %s" % [c for c, went in before.items() if not went]
    assert during == calls, "new connections that went wrong during the cut: %s" % {
        call: went for call, went in during.items() if went != calls[call]}
    assert during_open == open_calls, "open connections that went wrong during the cut: %s" % {
        call: went for call, went in during_open.items() if went != open_calls[call]}
    assert dropped > 0
    assert all(after.values()), "calls still cut after the heal: %s" % [c for c, went in after.items() if not went]
