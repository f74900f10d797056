"""geomys.tls: loading and checking certificate, key and CA files, reloads, and the gRPC fetcher.

Certificates are throwaway ones made by tests/certs.py in tmp_path. No
sockets: handshakes are in tests/integration/test_tls.py.
"""

import datetime
import ssl

import pytest

from geomys import tls
from tests.certs import Pki


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


@pytest.fixture
def files(pki):
    leaf = pki.issue("node")
    return tls.TlsFiles(leaf.cert_file, leaf.key_file, pki.ca_file)


def test_a_matching_certificate_and_key_load(files):
    context = tls.server_context(files)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("auth, mode", [("no", ssl.CERT_NONE), ("optional", ssl.CERT_OPTIONAL),
                                         ("yes", ssl.CERT_REQUIRED)])
def test_tls_auth_clients_sets_whether_a_client_certificate_is_asked_for(files, auth, mode):
    assert tls.server_context(files, auth).verify_mode == mode


def test_a_missing_certificate_is_named_with_the_reason(files, tmp_path):
    missing = str(tmp_path / "nowhere.crt")
    with pytest.raises(tls.TlsError, match="certificate .*nowhere.crt: No such file"):
        tls.server_context(tls.TlsFiles(missing, files.key_file))


def test_an_unreadable_key_is_named_with_the_reason(files, tmp_path):
    # A folder where the key should be: unreadable even for root, unlike chmod 000.
    with pytest.raises(tls.TlsError, match="key .*: Is a directory"):
        tls.server_context(tls.TlsFiles(files.cert_file, str(tmp_path)))


def test_a_key_of_another_certificate_does_not_match(files, pki):
    other = pki.issue("other")
    with pytest.raises(tls.TlsError, match="does not match"):
        tls.server_context(tls.TlsFiles(files.cert_file, other.key_file))


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(files, tmp_path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(open(files.key_file, "rb").read(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    with pytest.raises(tls.TlsError, match="encrypted.key is encrypted"):
        tls.server_context(tls.TlsFiles(files.cert_file, str(encrypted)))


def test_a_ca_file_that_is_not_pem_is_refused(files, tmp_path):
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(ssl.PEM_cert_to_DER_cert(open(files.ca_file).read()))
    with pytest.raises(tls.TlsError, match="CA file .*ca.der is not a PEM file"):
        tls.server_context(tls.TlsFiles(files.cert_file, files.key_file, str(not_pem)))


def test_a_pem_ca_file_without_a_certificate_is_refused(files, tmp_path):
    key_as_ca = tmp_path / "ca.pem"
    key_as_ca.write_bytes(open(files.key_file, "rb").read())
    with pytest.raises(tls.TlsError, match="CA file .*no usable PEM certificate"):
        tls.server_context(tls.TlsFiles(files.cert_file, files.key_file, str(key_as_ca)))


def test_a_certificate_that_is_not_pem_is_refused(files, tmp_path):
    text = tmp_path / "cert.txt"
    text.write_text("hello\n")
    with pytest.raises(tls.TlsError, match="certificate .*cert.txt is not a PEM file"):
        tls.server_context(tls.TlsFiles(str(text), files.key_file))


def test_expiry_dates_list_every_certificate_of_a_bundle(pki, tmp_path):
    expired = pki.issue("old", expired=True)
    bundle = open(expired.cert_file, "rb").read() + open(pki.ca_file, "rb").read()
    first, second = tls.expiry_dates(bundle, "bundle")
    yesterday = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    assert datetime.datetime.fromisoformat(first).date() == yesterday.date()
    assert datetime.datetime.fromisoformat(second) > datetime.datetime.now(datetime.timezone.utc)


def test_load_reads_expiry_dates_for_info(files):
    material = tls.load(files)
    assert datetime.datetime.fromisoformat(material.cert_expires) > datetime.datetime.now(datetime.timezone.utc)
    assert len(material.ca_expires) == 1
    assert material.key_pem.startswith(b"-----BEGIN")


def test_client_context_trusts_only_the_given_ca_and_checks_host_names(pki):
    context = tls.client_context(pki.ca_file)
    assert [c["subject"] for c in context.get_ca_certs()] == [
        c["subject"] for c in tls.server_context(tls.TlsFiles(*pki.issue("x"), pki.ca_file)).get_ca_certs()]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert not tls.client_context(pki.ca_file, check_hostname=False).check_hostname


def test_client_context_refuses_a_client_key_that_does_not_match(pki):
    one, two = pki.issue("one"), pki.issue("two")
    with pytest.raises(tls.TlsError, match="does not match"):
        tls.client_context(pki.ca_file, one.cert_file, two.key_file)


def test_a_reload_swaps_the_whole_material(files, pki):
    server = tls.ServerTls(files, "no", clients=True, cluster=False)
    before = server.context
    renewed = pki.issue("renewed")
    for src, dst in ((renewed.cert_file, files.cert_file), (renewed.key_file, files.key_file)):
        open(dst, "wb").write(open(src, "rb").read())
    server.reload()
    assert server.context is not before
    assert (server.info()["reloads"], server.info()["failed_reloads"]) == (1, 0)


def test_a_failed_reload_keeps_the_current_material_and_is_counted(files, pki):
    server = tls.ServerTls(files, "no", clients=True, cluster=False)
    before = server.context
    open(files.key_file, "wb").write(open(pki.issue("other").key_file, "rb").read())  # no longer matches
    with pytest.raises(tls.TlsError, match="does not match"):
        server.reload()
    assert server.context is before
    assert (server.info()["reloads"], server.info()["failed_reloads"]) == (0, 1)


def test_grpc_gets_a_new_certificate_once_after_each_reload_and_none_otherwise(files):
    server = tls.ServerTls(files, "no", clients=False, cluster=True)
    server.grpc_server_credentials()
    assert server.grpc_certificate_update() is None      # nothing new since the credentials were built
    server.reload()
    assert server.grpc_certificate_update() is not None  # the first handshake after the reload
    assert server.grpc_certificate_update() is None      # later ones keep it


def test_info_shows_what_tls_covers_and_the_expiry_dates(files):
    info = tls.ServerTls(files, "yes", clients=True, cluster=True).info()
    assert (info["clients"], info["cluster"], info["auth_clients"]) == (True, True, "yes")
    assert info["cert_expires"] and len(info["ca_expires"]) == 1
