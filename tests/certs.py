"""Throwaway certificates for the TLS tests, made with trustme in a test's folder.

`Pki(folder)` has one CA (`ca_file`) and issues leaf certificates into PEM
files on demand; a second, unrelated CA (`other`) signs certificates the
first one must refuse. Nothing here is meant for anything but a test.
"""

import datetime
from pathlib import Path
from typing import NamedTuple, Optional

import trustme

LOOPBACK = ("127.0.0.1", "localhost")


class Leaf(NamedTuple):
    cert_file: str
    key_file: str


class Pki:
    """A CA and the certificates it signed, all as files under `folder`."""

    def __init__(self, folder: Path, ca: Optional[trustme.CA] = None, name: str = "ca") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca = ca or trustme.CA()
        self.name = name
        self.ca_file = str(self.folder / ("%s.pem" % name))
        self.ca.cert_pem.write_to_path(self.ca_file)
        self._other: Optional["Pki"] = None

    @property
    def other(self) -> "Pki":
        """An unrelated CA, in the same folder."""
        if self._other is None:
            self._other = Pki(self.folder, name=self.name + "-other")
        return self._other

    def issue(self, name: str, *identities: str, expired: bool = False) -> Leaf:
        """Write a certificate for `identities` (default: the loopback names) and its key; return their paths."""
        kwargs = {}
        if expired:
            now = datetime.datetime.now(datetime.timezone.utc)
            kwargs = dict(not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1))
        leaf = self.ca.issue_cert(*(identities or LOOPBACK), **kwargs)
        cert_file = self.folder / ("%s-%s.crt" % (self.name, name))
        key_file = self.folder / ("%s-%s.key" % (self.name, name))
        leaf.cert_chain_pems[0].write_to_path(str(cert_file))
        leaf.private_key_pem.write_to_path(str(key_file))
        return Leaf(str(cert_file), str(key_file))

    def server_options(self, leaf: Leaf, **options) -> dict:
        """geomys options presenting `leaf` and trusting this CA."""
        return dict(tls_cert_file=leaf.cert_file, tls_key_file=leaf.key_file, tls_ca_file=self.ca_file, **options)
