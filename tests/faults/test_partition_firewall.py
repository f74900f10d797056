"""The partition firewall itself (tests/faults/partition.py), on small processes under three uids.

Each "node" is an echo server on its "gRPC" port running under its uid, plus
a second echo server of node A on its "client" port. Probes are short
processes under a node's uid that connect to a port and wait for their byte
to come back. The cut must stop every call between A and the others, both
ways, and nothing else; the heal must let them through again.
"""

import socket
import subprocess
import sys

import pytest

from tests.faults.partition import Endpoint, Firewall, UidReservation
from tests.helpers import HOST, free_port, wait_until


def listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True

pytestmark = pytest.mark.integration

PROBE_TIMEOUT = 2.0

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


def as_uid(uid: int, code: str, *args) -> list[str]:
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", sys.executable, "-I", "-S", "-c", code,
            *args]


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
    firewall = Firewall()
    # (probe's uid, port it calls) -> whether the call must go through during the cut
    calls = {(a, ports["b"]): False, (a, ports["c"]): False, (b, ports["a"]): False, (c, ports["a"]): False,
             (b, ports["c"]): True, (c, ports["b"]): True, (b, ports["a_client"]): True,
             (c, ports["a_client"]): True}

    def outcomes() -> dict:
        probes = {call: subprocess.Popen(as_uid(call[0], PROBE, str(call[1]))) for call in calls}
        return {call: probe.wait(5 * PROBE_TIMEOUT + 10) == 0 for call, probe in probes.items()}
    try:
        wait_until(lambda: all(listening(port) for port in ports.values()), 20, 0.05, "the echo servers to listen")
        before = outcomes()
        firewall.isolate(Endpoint(a, ports["a"]), [Endpoint(b, ports["b"]), Endpoint(c, ports["c"])])
        during = outcomes()
        dropped = firewall.heal()
        after = outcomes()
    finally:
        firewall.heal()
        for server in servers:
            server.kill()
            server.wait(10)
    assert all(before.values()), "calls that failed before the cut: %s" % [c for c, went in before.items() if not went]
    assert during == calls, "calls that went wrong during the cut: %s" % {
        call: went for call, went in during.items() if went != calls[call]}
    assert dropped > 0
    assert all(after.values()), "calls still cut after the heal: %s" % [c for c, went in after.items() if not went]
