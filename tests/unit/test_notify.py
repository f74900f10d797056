"""geomys.notify: systemd's readiness datagram, sent only where $NOTIFY_SOCKET names a socket."""

import os
import socket

from geomys.notify import notify


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_the_fields_go_in_one_datagram_one_per_line(monkeypatch, tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert notify("READY=1", "STATUS=serving") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_an_at_sign_names_an_abstract_socket(monkeypatch):
    name = "geomys-unit-%d" % os.getpid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_a_socket_that_is_not_there_is_logged_not_raised(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    with caplog.at_level("WARNING"):
        assert notify("READY=1") is False
    assert "missing.sock" in caplog.text
