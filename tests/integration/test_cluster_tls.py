"""A three-node cluster whose nodes talk over mutual TLS (tls_cluster = yes; docs/security.md).

Writes through every node, a leader killed with kill -9 under load with no
acknowledged write lost, a node with a certificate from another CA that
cannot join nor change anything through any gRPC method, and SIGHUP giving
new connections to a node's gRPC port its renewed certificate. The nodes
share one throwaway certificate for 127.0.0.1 (tests/certs.py).
"""

import signal
import socket
import ssl

import grpc
import pytest

from geomys.cluster.pb import cluster_pb2 as pb
from tests.certs import Pki
from tests.cluster_helpers import Cluster, WriteLoad, grpc_address
from tests.helpers import HOST, ServerProcess, wait_until

pytestmark = pytest.mark.integration

#: What INFO says about a node's place in the cluster and its data; no call of a stranger may change it.
STATE_FIELDS = ("role", "term", "leader_id", "nodes", "replication_offset", "digest", "keys")


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


@pytest.fixture
def node_cert(pki):
    return pki.issue("node")


@pytest.fixture
def cluster(tmp_path, pki, node_cert):
    cluster = Cluster(tmp_path / "cluster", **pki.server_options(node_cert, tls_cluster=True))
    try:
        yield cluster.start(3)
    finally:
        cluster.cleanup()


def state(cluster: Cluster) -> dict:
    return {n: {field: info.get(field) for field in STATE_FIELDS} for n, info in cluster.infos().items()}


def channel(address: str, ca_file: str, leaf=None) -> grpc.Channel:
    """A TLS channel to a node trusting `ca_file`, presenting `leaf` if given."""
    key, cert = (open(leaf.key_file, "rb").read(), open(leaf.cert_file, "rb").read()) if leaf else (None, None)
    credentials = grpc.ssl_channel_credentials(open(ca_file, "rb").read(), key, cert)
    return grpc.secure_channel(address, credentials)


def call_every_method(chan: grpc.Channel) -> dict:
    """Call each method of the Cluster service once with an empty request; return method -> status code."""
    codes = {}
    for method in pb.DESCRIPTOR.services_by_name["Cluster"].methods:
        path = "/%s/%s" % (method.containing_service.full_name, method.name)
        request_type = getattr(pb, method.input_type.name)
        reply_type = getattr(pb, method.output_type.name)
        make = chan.unary_stream if method.server_streaming else chan.unary_unary
        stub = make(path, request_serializer=request_type.SerializeToString,
                    response_deserializer=reply_type.FromString)
        try:
            reply = stub(request_type(), timeout=5)
            if method.server_streaming:
                list(reply)
            codes[method.name] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            codes[method.name] = exc.code()
    return codes


def grpc_port_certificate(port: int, pki: Pki, leaf) -> bytes:
    """The certificate a node's gRPC port presents to a new connection (a TLS handshake, no gRPC)."""
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.load_cert_chain(leaf.cert_file, leaf.key_file)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as sock:
            return sock.getpeercert(binary_form=True)


def der(cert_file: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(open(cert_file).read())


def test_writes_through_every_node_and_a_killed_leader_lose_nothing_acknowledged(cluster):
    leader = cluster.wait_leader()
    for node_id in cluster.running_ids():
        assert cluster.info(node_id)["tls"]["cluster"] is True
        assert cluster.write(node_id, "SET", key="via-%d" % node_id, value="v%d" % node_id) == {"status": "OK"}
    cluster.wait_converged()
    written = {"via-%d" % n: "v%d" % n for n in cluster.running_ids()}
    for node_id in cluster.running_ids():
        assert cluster.data(node_id, written) == written, "node %d" % node_id

    survivors = [n for n in cluster.running_ids() if n != leader]
    load = WriteLoad(lambda: [cluster.port(n) for n in cluster.running_ids()], threads=8, prefix="tls").start()
    try:
        load.wait_acked(500, timeout=30)
        cluster.kill(leader)
        cluster.wait_leader(ids=survivors, not_in=[leader])
        load.wait_acked(load.acked + 500, timeout=30)   # the new leader takes writes over TLS
    finally:
        load.stop()
    assert not load.unexpected, load.unexpected[:5]
    cluster.wait_converged(survivors)
    for node_id in survivors:
        load.check(cluster.data(node_id, load.all_keys()), "node %d" % node_id)
        assert cluster.data(node_id, written) == written


def test_a_node_with_a_certificate_from_another_ca_cannot_join(cluster, pki, tmp_path):
    before = state(cluster)
    stranger = pki.other.issue("intruder")
    # It trusts the cluster's CA, so only its own certificate is at fault.
    intruder = ServerProcess(tmp_path / "intruder", node_id=9, join=grpc_address(cluster.nodes[1]),
                             heartbeat_interval=0.2, failure_timeout=1.0, tls_cluster=True,
                             tls_cert_file=stranger.cert_file, tls_key_file=stranger.key_file,
                             tls_ca_file=pki.ca_file)
    try:
        intruder.start(wait=False)
        try:
            status = intruder.proc.wait(60)
        except Exception:
            raise AssertionError("the intruder did not give up:\n%s" % intruder.log_text()) from None
        assert status != 0, intruder.log_text()
    finally:
        intruder.cleanup()
    assert state(cluster) == before


def test_no_grpc_method_of_a_member_answers_a_certificate_from_another_ca(cluster, pki):
    cluster.wait_converged()
    before = state(cluster)
    stranger = pki.other.issue("caller")
    for node_id in cluster.running_ids():
        address = grpc_address(cluster.nodes[node_id])
        with channel(address, pki.ca_file, stranger) as foreign:
            codes = call_every_method(foreign)
        assert len(codes) == len(pb.DESCRIPTOR.services_by_name["Cluster"].methods) and \
            set(codes.values()) == {grpc.StatusCode.UNAVAILABLE}, codes
        with channel(address, pki.ca_file) as anonymous:    # no certificate at all
            assert set(call_every_method(anonymous).values()) == {grpc.StatusCode.UNAVAILABLE}
        with grpc.insecure_channel(address) as plaintext:
            assert set(call_every_method(plaintext).values()) == {grpc.StatusCode.UNAVAILABLE}
    assert state(cluster) == before


def test_sighup_gives_new_connections_to_the_grpc_port_the_renewed_certificate(cluster, pki, node_cert):
    leader = cluster.wait_leader()
    follower = [n for n in cluster.running_ids() if n != leader][0]
    grpc_port = cluster.port(follower) + 1000
    caller = pki.issue("caller")
    assert grpc_port_certificate(grpc_port, pki, caller) == der(node_cert.cert_file)
    renewed = pki.issue("renewed")
    for src, dst in ((renewed.cert_file, node_cert.cert_file), (renewed.key_file, node_cert.key_file)):
        open(dst, "wb").write(open(src, "rb").read())
    cluster.nodes[follower].proc.send_signal(signal.SIGHUP)
    wait_until(lambda: cluster.info(follower)["tls"]["reloads"] == 1, 10, message="the reload")
    assert grpc_port_certificate(grpc_port, pki, caller) == der(renewed.cert_file)
    # Replication and forwarding go on over the connections already open.
    assert cluster.write(follower, "SET", key="after-reload", value="v") == {"status": "OK"}
    cluster.wait_converged()
    for node_id in cluster.running_ids():
        assert cluster.data(node_id, ["after-reload"]) == {"after-reload": "v"}
