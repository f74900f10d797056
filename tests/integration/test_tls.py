"""TLS on the client port of a real geomys process (docs/security.md).

Plaintext and TLS clients on the wrong port, certificates refused at the
handshake (another CA, expired, wrong host name), a client that never
handshakes, TLS only (port = 0), and SIGHUP reloading the certificate while
connections stay open. Certificates are throwaway ones from tests/certs.py.
"""

import signal
import threading
import socket
import ssl

import msgpack
import pytest

import geomys
from geomys.client import GeomysConnectionError
from tests.certs import Pki
from tests.helpers import HOST, RawClient, ServerProcess, free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


@pytest.fixture
def start_tls_server(start_server, pki):
    """Factory: a server with a plaintext port and a TLS port (`server.tls_port`), presenting `leaf`."""
    def factory(leaf=None, wait=True, **options):
        tls_port = free_port()
        server = start_server(wait=wait, tls_port=tls_port,
                              **pki.server_options(leaf or pki.issue("server"), **options))
        server.tls_port = tls_port
        return server
    return factory


def tls_client(port: int, ca_file: str, **options) -> geomys.Client:
    return geomys.Client(HOST, port, ssl=True, ssl_ca_certs=ca_file, timeout=10, connect_timeout=10, **options)


def tls_info(server) -> dict:
    return server.info()["tls"]


class TlsRawClient:
    """One TLS connection speaking MessagePack by hand: it can show the certificate the server presented."""

    def __init__(self, port: int, ca_file: str) -> None:
        context = ssl.create_default_context(cafile=ca_file)
        self.sock = context.wrap_socket(socket.create_connection((HOST, port), timeout=10), server_hostname=HOST)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def peer_certificate(self) -> bytes:
        return self.sock.getpeercert(binary_form=True)

    def call(self, command: str, **fields) -> dict:
        self.sock.sendall(msgpack.packb({"command": command, **fields}))
        while True:
            for reply in self.unpacker:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed by the server")
            self.unpacker.feed(data)

    def close(self) -> None:
        self.sock.close()


def der(cert_file: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(open(cert_file).read())


# -- the two ports -----------------------------------------------------------------

def test_tls_and_plaintext_clients_share_one_keyspace(start_tls_server, pki):
    server = start_tls_server()
    assert server.call("SET", key="k", value="plain") == {"status": "OK"}
    with tls_client(server.tls_port, pki.ca_file) as client:
        assert client.get("k") == "plain"
        assert client.set("t", "tls")
    assert server.call("GET", key="t")["value"] == "tls"
    info = tls_info(server)
    assert (info["clients"], info["cluster"], info["port"]) == (True, False, server.tls_port)


def test_plaintext_client_on_the_tls_port_fails_cleanly_and_the_server_goes_on(start_tls_server, pki):
    server = start_tls_server()
    with RawClient(server.tls_port) as plain:
        plain.send({"command": "PING"})
        assert plain.is_closed_by_server(), "the TLS port answered a plaintext request"
    wait_until(lambda: tls_info(server)["handshake_failures"] == 1, 10, message="the failed handshake counted")
    with tls_client(server.tls_port, pki.ca_file) as client:
        assert client.ping() == "PONG"
    assert server.call("PING")["message"] == "PONG"


def test_tls_client_on_the_plaintext_port_fails_cleanly_and_the_server_goes_on(start_tls_server, pki):
    server = start_tls_server()
    with pytest.raises(GeomysConnectionError, match="TLS handshake"):
        tls_client(server.port, pki.ca_file).ping()
    assert server.call("PING")["message"] == "PONG"
    with tls_client(server.tls_port, pki.ca_file) as client:
        assert client.ping() == "PONG"


def test_a_client_that_never_handshakes_does_not_hold_up_others(start_tls_server, pki):
    server = start_tls_server()
    # Connected, silent: its handshake waits in its own thread, not in the acceptor.
    with socket.create_connection((HOST, server.tls_port), timeout=10):
        for _ in range(3):
            with tls_client(server.tls_port, pki.ca_file) as client:
                assert client.ping() == "PONG"


def test_tls_only_with_port_0_serves_tls_and_no_plaintext(tmp_path, pki):
    tls_port = free_port(span=1000)
    server = ServerProcess(tmp_path / "tls-only", port=tls_port,
                           **pki.server_options(pki.issue("server"), tls_port=tls_port))
    server.options["port"] = 0   # no plaintext port at all

    def pong():
        assert server.proc.poll() is None, server.log_text()
        try:
            with tls_client(tls_port, pki.ca_file) as client:
                return client.ping() == "PONG"
        except GeomysConnectionError:
            return False
    try:
        server.start(wait=False)
        wait_until(pong, 20, 0.05, "PONG over TLS")
        with tls_client(tls_port, pki.ca_file) as client:
            info = client.info()
        assert info["address"].endswith(":%d" % tls_port)
        assert "127.0.0.1:%d (TLS)" % tls_port in server.log_text()
        assert "127.0.0.1:0" not in server.log_text()
    finally:
        server.cleanup()


# -- refused at the handshake ------------------------------------------------------

def test_client_certificates_from_another_ca_or_none_are_refused_when_required(start_tls_server, pki):
    server = start_tls_server(tls_auth_clients="yes")
    stranger = pki.other.issue("client")
    with pytest.raises(GeomysConnectionError):
        tls_client(server.tls_port, pki.ca_file, ssl_certfile=stranger.cert_file,
                   ssl_keyfile=stranger.key_file).ping()
    with pytest.raises(GeomysConnectionError):
        tls_client(server.tls_port, pki.ca_file).ping()
    wait_until(lambda: tls_info(server)["handshake_failures"] == 2, 10, message="both handshakes refused")
    member = pki.issue("client")
    with tls_client(server.tls_port, pki.ca_file, ssl_certfile=member.cert_file,
                    ssl_keyfile=member.key_file) as client:
        assert client.ping() == "PONG"
    assert tls_info(server)["auth_clients"] == "yes"


def test_an_expired_client_certificate_is_refused(start_tls_server, pki):
    server = start_tls_server(tls_auth_clients="yes")
    expired = pki.issue("old-client", expired=True)
    with pytest.raises(GeomysConnectionError):
        tls_client(server.tls_port, pki.ca_file, ssl_certfile=expired.cert_file,
                   ssl_keyfile=expired.key_file).ping()
    wait_until(lambda: tls_info(server)["handshake_failures"] == 1, 10, message="the handshake refused")


def test_an_expired_server_certificate_is_refused_by_the_client(start_tls_server, pki):
    server = start_tls_server(leaf=pki.issue("old-server", expired=True))
    with pytest.raises(GeomysConnectionError, match="expired"):
        tls_client(server.tls_port, pki.ca_file).ping()
    assert server.call("PING")["message"] == "PONG"


def test_a_certificate_for_another_host_name_is_refused_where_the_client_checks_it(start_tls_server, pki):
    server = start_tls_server(leaf=pki.issue("elsewhere", "db.example.net"))
    with pytest.raises(GeomysConnectionError, match="mismatch"):
        tls_client(server.tls_port, pki.ca_file).ping()
    # The name was the only fault: the chain is good.
    with tls_client(server.tls_port, pki.ca_file, ssl_check_hostname=False) as client:
        assert client.ping() == "PONG"


# -- SIGHUP ------------------------------------------------------------------------

def test_sighup_gives_new_connections_the_new_certificate_and_open_ones_keep_working(start_tls_server, pki):
    first = pki.issue("server")
    server = start_tls_server(leaf=first)
    cert_file, key_file = first
    old = TlsRawClient(server.tls_port, pki.ca_file)
    try:
        assert old.call("SET", key="before", value="1") == {"status": "OK"}
        old_der = old.peer_certificate()
        assert old_der == der(cert_file)
        renewed = pki.issue("renewed")
        for src, dst in ((renewed.cert_file, cert_file), (renewed.key_file, key_file)):
            open(dst, "wb").write(open(src, "rb").read())
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: old.call("INFO")["value"]["tls"]["reloads"] == 1, 10, message="the reload")
        fresh = TlsRawClient(server.tls_port, pki.ca_file)
        try:
            assert fresh.peer_certificate() == der(renewed.cert_file) != old_der
            assert fresh.call("GET", key="before")["value"] == "1"
        finally:
            fresh.close()
        assert old.call("SET", key="after", value="2") == {"status": "OK"}
        assert old.peer_certificate() == old_der   # the open session kept its certificate
    finally:
        old.close()
    wait_until(lambda: "TLS certificate reloaded" in server.log_text(), 10, message="the reload logged")


def test_a_failed_reload_keeps_the_current_certificate_and_logs_one_line(start_tls_server, pki):
    first = pki.issue("server")
    server = start_tls_server(leaf=first)
    open(first.key_file, "wb").write(open(pki.issue("other").key_file, "rb").read())  # no longer matches
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS reload failed" in server.log_text(), 10, message="the failed reload logged")
    failures = [line for line in server.log_text().splitlines() if "TLS reload failed" in line]
    assert len(failures) == 1 and "does not match" in failures[0], failures
    assert tls_info(server)["failed_reloads"] == 1
    fresh = TlsRawClient(server.tls_port, pki.ca_file)
    try:
        assert fresh.peer_certificate() == der(first.cert_file)
        assert fresh.call("PING")["message"] == "PONG"
    finally:
        fresh.close()
    assert tls_info(server)["reloads"] == 0


def test_sighup_without_tls_is_logged_and_the_server_goes_on(start_server):
    server = start_server()
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP ignored" in server.log_text(), 10, message="the SIGHUP logged")
    assert server.call("PING")["message"] == "PONG"
    assert server.info()["tls"] == {"clients": False, "cluster": False}



# -- writethrough: TLS connections wait for the fsync themselves, plaintext ones through the outbox --

def test_writethrough_pipelines_on_tls_and_plaintext_connections_answer_in_order_and_survive_kill_9(
        start_tls_server, pki, tmp_path):
    options = dict(persistence="writethrough", persistence_path=str(tmp_path / "db.aof"))
    server = start_tls_server(**options)
    rounds = 50
    failures = []

    def pipelines(client, name: str) -> None:
        try:
            with client:
                for round_ in range(1, rounds + 1):
                    pipe = client.pipeline().incr(name).get(name).push(name + ":log", str(round_)).incr(name)
                    assert pipe.execute() == [2 * round_ - 1, str(2 * round_ - 1), True, 2 * round_]
        except Exception as exc:  # an assertion or a connection error, reported below
            failures.append((name, exc))

    threads = [threading.Thread(target=pipelines, args=(tls_client(server.tls_port, pki.ca_file), "tls")),
               threading.Thread(target=pipelines, args=(geomys.Client(HOST, server.port, timeout=10), "plain"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads) and not failures, failures
    server.kill()
    server.start()
    for name in ("tls", "plain"):
        assert server.call("GET", key=name)["value"] == str(2 * rounds)
        assert [server.call("LPOP", key=name + ":log")["value"] for _ in range(rounds)] == \
            [str(round_) for round_ in range(1, rounds + 1)]
