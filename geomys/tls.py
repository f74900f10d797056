"""TLS: loading and checking certificates, and the credentials built from them.

Everything that reads a certificate, key or CA file lives here: the ssl
contexts of the client listener and of clients (standard library `ssl`), the
gRPC credentials of the cluster (grpcio's own), and the reload on SIGHUP.
Errors are TlsError with one line a user can act on. Called from the main
thread (start, SIGHUP), handler threads (the current context) and gRPC's
threads (the current server certificate).
"""

import ssl
import threading
from dataclasses import dataclass
from typing import Optional

AUTH_CLIENTS = ("no", "optional", "yes")
_VERIFY_MODES = {"no": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "yes": ssl.CERT_REQUIRED}
_PEM_MARK = b"-----BEGIN "


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the file and why."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a server's certificate (chain), private key and CA bundle are."""

    cert_file: str
    key_file: str
    ca_file: Optional[str] = None


@dataclass(frozen=True, slots=True)
class Material:
    """One consistent load of a TlsFiles: the checked ssl context and the PEM bytes gRPC needs."""

    context: ssl.SSLContext
    cert_pem: bytes
    key_pem: bytes
    ca_pem: Optional[bytes]
    cert_expires: str
    ca_expires: tuple[str, ...]


def read_pem(path: str, what: str) -> bytes:
    """Return the bytes of a PEM file; TlsError if it is missing, unreadable or not PEM."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TlsError("cannot read the TLS %s %s: %s" % (what, path, exc.strerror or exc)) from None
    if _PEM_MARK not in data:
        raise TlsError("the TLS %s %s is not a PEM file" % (what, path))
    return data


class _Encrypted(Exception):
    """Raised from ssl's passphrase callback: a key that needs a passphrase is refused, never prompted for."""


def _no_passphrase():
    raise _Encrypted


def server_context(files: TlsFiles, auth_clients: str = "no") -> ssl.SSLContext:
    """Build the client listener's context: our certificate, and the CA clients' certificates must chain to.

    `auth_clients` is no (no client certificate asked for), optional (checked
    if sent) or yes (required). Raises TlsError naming the file at fault.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, files.cert_file, files.key_file)
    if files.ca_file:
        _load_ca(context, files.ca_file)
    context.verify_mode = _VERIFY_MODES[auth_clients]
    return context


def client_context(ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                   key_file: Optional[str] = None, check_hostname: bool = True) -> ssl.SSLContext:
    """Build a client's context: trust `ca_file` (else the system's CAs), present `cert_file` if given.

    The server's certificate is always verified; `check_hostname` also
    requires it to name the host dialled. Raises TlsError.
    """
    if ca_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the given CA only
        _load_ca(context, ca_file)
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if cert_file:
        _load_chain(context, cert_file, key_file or cert_file)
    return context


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    read_pem(cert_file, "certificate")
    read_pem(key_file, "key")
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _Encrypted:
        raise TlsError("the TLS key %s is encrypted; give it without a passphrase" % key_file) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsError("the TLS key %s does not match the certificate %s" % (key_file, cert_file)) from None
        raise TlsError("cannot load the TLS certificate %s with key %s: %s"
                       % (cert_file, key_file, exc.reason or exc)) from None


def _load_ca(context: ssl.SSLContext, ca_file: str) -> None:
    read_pem(ca_file, "CA file")
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsError("the TLS CA file %s holds no usable PEM certificate: %s"
                       % (ca_file, exc.reason or exc)) from None


def expiry_dates(pem: bytes, what: str) -> tuple[str, ...]:
    """The notAfter date (ISO 8601, UTC) of every certificate in `pem`, in file order."""
    # cryptography is imported here, not at the top: clients (the library,
    # geomys-cli) import this module for client_context and need only ssl.
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TlsError("the TLS %s cannot be parsed: %s" % (what, exc)) from None
    return tuple(cert.not_valid_after_utc.isoformat() for cert in certs)


def load(files: TlsFiles, auth_clients: str = "no") -> Material:
    """Read and check every file once; raise TlsError on the first problem."""
    context = server_context(files, auth_clients)
    cert_pem = read_pem(files.cert_file, "certificate")
    ca_pem = read_pem(files.ca_file, "CA file") if files.ca_file else None
    return Material(context=context, cert_pem=cert_pem, key_pem=read_pem(files.key_file, "key"), ca_pem=ca_pem,
                    cert_expires=expiry_dates(cert_pem, "certificate " + files.cert_file)[0],
                    ca_expires=expiry_dates(ca_pem, "CA file " + files.ca_file) if ca_pem else ())


class ServerTls:
    """A node's TLS material as loaded now, swapped whole by a successful reload.

    Readers take `context` (the client listener, once per connection) or the
    gRPC certificate (once per handshake); a reload builds everything anew
    and replaces it in one assignment, so nobody sees half of a reload.
    """

    def __init__(self, files: TlsFiles, auth_clients: str, clients: bool, cluster: bool) -> None:
        self.files = files
        self.auth_clients = auth_clients
        self.clients = clients
        self.cluster = cluster
        self._material = load(files, auth_clients)
        self._lock = threading.Lock()
        self._generation = 0        # bumped by each successful reload
        self._grpc_generation = 0   # the generation gRPC's server last took
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def context(self) -> ssl.SSLContext:
        """The ssl context new client connections are wrapped with."""
        return self._material.context

    def reload(self) -> None:
        """Re-read the files; on any problem keep the current material and raise TlsError."""
        try:
            material = load(self.files, self.auth_clients)
        except TlsError:
            with self._lock:
                self.failed_reloads += 1
            raise
        with self._lock:
            self._material = material
            self._generation += 1
            self.reloads += 1

    def info(self) -> dict:
        """The INFO map's `tls` section."""
        material = self._material
        return {
            "clients": self.clients,
            "cluster": self.cluster,
            "auth_clients": self.auth_clients if self.clients else "no",
            "cert_file": self.files.cert_file,
            "cert_expires": material.cert_expires,
            "ca_expires": list(material.ca_expires),
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
        }

    def grpc_server_credentials(self):
        """Credentials for the cluster's gRPC port: mutual TLS, the peer's certificate checked against the CA.

        They are dynamic: gRPC asks `grpc_certificate_update` before every new
        handshake, so a reload reaches new connections between nodes too.
        """
        import grpc

        with self._lock:
            self._grpc_generation = self._generation
        return grpc.dynamic_ssl_server_credentials(self._grpc_configuration(self._material),
                                                   self.grpc_certificate_update, require_client_authentication=True)

    def grpc_channel_credentials(self):
        """Credentials for calls to other nodes: trust the CA only, present our certificate."""
        import grpc

        material = self._material
        return grpc.ssl_channel_credentials(root_certificates=material.ca_pem, private_key=material.key_pem,
                                            certificate_chain=material.cert_pem)

    def grpc_certificate_update(self):
        """gRPC's fetcher: the new configuration after a reload, else None (keep the current one)."""
        with self._lock:
            if self._grpc_generation == self._generation:
                return None
            self._grpc_generation = self._generation
            material = self._material
        return self._grpc_configuration(material)

    @staticmethod
    def _grpc_configuration(material: Material):
        import grpc

        return grpc.ssl_server_certificate_configuration([(material.key_pem, material.cert_pem)],
                                                         root_certificates=material.ca_pem)
