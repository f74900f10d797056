#!/usr/bin/env python3
"""Make a THROWAWAY certificate authority and one certificate per Geomys node, for local use.

NOT FOR PRODUCTION: the CA's private key is left in a plain file beside the
certificates, with no passphrase, and nothing here revokes, audits or
protects anything. Use it to try TLS on one machine or a test bed;
docs/security.md says how to make real certificates.

    python scripts/make_certs.py DIR                         # nodes 1-3 on 127.0.0.1 / localhost
    python scripts/make_certs.py DIR --node 1=10.0.0.11,geomys-1.lan --node 2=10.0.0.12 --node 3=10.0.0.13

DIR gets ca.pem (the CA certificate: every node's tls_ca_file), ca.key,
nodeN.crt and nodeN.key (node N's tls_cert_file and tls_key_file), and
client.crt / client.key (a client certificate for tls_auth_clients). Each
node certificate names the addresses given for it (IP addresses or DNS
names), which must include the address the other nodes and the clients dial.
If DIR already holds ca.pem and ca.key, that CA is kept and only the node
and client certificates are issued anew (a renewal: send the nodes SIGHUP).
Keys are written with mode 0600. Uses the `cryptography` package, which
Geomys installs.
"""

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

WARNING = "THROWAWAY certificates for local testing: NOT FOR PRODUCTION (the CA key sits unprotected in %s)"
CA_DAYS = 365
LEAF_DAYS = 90
LOCAL_NAMES = ("127.0.0.1", "localhost")


def parse_node(text: str) -> tuple[int, tuple[str, ...]]:
    """Parse --node ID=NAME[,NAME...] into (id, names)."""
    node_id, sep, names = text.partition("=")
    if not sep or not node_id.isdigit() or int(node_id) <= 0 or not names.strip(","):
        raise argparse.ArgumentTypeError("expected ID=ADDRESS[,ADDRESS...], got %r" % text)
    return int(node_id), tuple(name.strip() for name in names.split(",") if name.strip())


def subject_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """The subjectAltName entries of `names`: IP addresses as such, anything else as a DNS name."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Geomys throwaway CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("Geomys throwaway CA (not for production)")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca_key, ca_cert: x509.Certificate, common_name: str, names: Sequence[str],
          now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate signed by the CA, good as a server and as a client (a node is both)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(subject_names(names)), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_all(folder: Path, nodes: dict[int, tuple[str, ...]]) -> list[Path]:
    """Write (or reuse) the CA and issue every node's certificate and a client's; return the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_file, ca_key_file = folder / "ca.pem", folder / "ca.key"
    written = []
    if ca_file.exists() and ca_key_file.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    else:
        ca_key, ca_cert = make_ca(now)
        _write(ca_key_file, _key_pem(ca_key), private=True)
        _write(ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
        written += [ca_file, ca_key_file]
    leaves = {"node%d" % node_id: names for node_id, names in sorted(nodes.items())}
    leaves["client"] = ()
    for stem, names in leaves.items():
        key, cert = issue(ca_key, ca_cert, "geomys " + stem, names, now)
        _write(folder / (stem + ".key"), _key_pem(key), private=True)
        _write(folder / (stem + ".crt"), cert.public_bytes(serialization.Encoding.PEM))
        written += [folder / (stem + ".crt"), folder / (stem + ".key")]
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("folder", type=Path, help="where the files go (created if missing)")
    parser.add_argument("--node", type=parse_node, action="append", metavar="ID=ADDRESS[,ADDRESS...]",
                        help="a node and the addresses its certificate names (default: nodes 1-3 on "
                             + " and ".join(LOCAL_NAMES) + ")")
    args = parser.parse_args(argv)
    nodes = dict(args.node) if args.node else {n: LOCAL_NAMES for n in (1, 2, 3)}
    sys.stderr.write(WARNING % (args.folder / "ca.key") + "\n")
    for path in write_all(args.folder, nodes):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
