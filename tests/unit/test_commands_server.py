"""PING, ECHO, INFO, AUTH and COMPACT through the Engine (no sockets)."""

import pytest

import geomys
from tests.fakes import Harness, assert_error


@pytest.fixture
def h():
    return Harness()


def test_ping_answers_pong(h):
    assert h.run("PING") == {"status": "OK", "message": "PONG"}


@pytest.mark.parametrize("message", ["hello", "", "\u2603 snow", b"\x00bin"])
def test_echo_returns_the_message_unchanged(h, message):
    assert h.run("ECHO", message=message) == {"status": "OK", "message": message}


def test_echo_without_a_message_is_bad_request_naming_the_field(h):
    assert_error(h.run("ECHO"), "BAD_REQUEST", "message")


def test_echo_with_an_ill_typed_message_is_bad_request_naming_the_field(h):
    assert_error(h.run("ECHO", message={"a": 1}), "BAD_REQUEST", "message")


def test_info_reports_the_engine_figures(h):
    h.ok("SET", key="a", value="1")
    h.ok("PUSH", key="b", value="x")
    info = h.value("INFO")
    assert info["version"] == geomys.__version__
    assert info["keys"] == 2
    assert info["connected_clients"] == 1
    assert info["blocked_clients"] == 0
    assert info["commands_processed"] == 3  # SET, PUSH and this INFO
    assert info["replication_offset"] == 0  # no sink: nothing is numbered


def test_info_counts_commands_of_clients_that_have_left(h):
    other = h.new_context()
    h.run("PING", ctx=other)
    h.run("PING", ctx=other)
    h.engine.disconnect(other)
    info = h.value("INFO")
    assert info["connected_clients"] == 1
    assert info["commands_processed"] == 3


def test_info_includes_what_the_info_sources_add(h):
    h.engine.add_info_source(lambda: {"role": "standalone", "node_id": 7})
    info = h.value("INFO")
    assert info["role"] == "standalone" and info["node_id"] == 7


def test_compact_without_persistence_is_ok_and_says_why(h):
    reply = h.ok("COMPACT")
    assert "persistence" in reply.get("message", "")


def test_compact_runs_the_compactor(h):
    h.engine.set_compactor(lambda: "rewrote 3 records")
    assert h.run("COMPACT") == {"status": "OK", "message": "rewrote 3 records"}


# -- AUTH ---------------------------------------------------------------------

@pytest.fixture
def locked():
    return Harness(requirepass="s3cret")


@pytest.mark.parametrize("command, fields", [
    ("GET", {"key": "k"}), ("SET", {"key": "k", "value": "v"}), ("INFO", {}), ("ECHO", {"message": "m"}),
    ("FLUSHDB", {}), ("BLPOP", {"key": "k", "timeout": 0}),
])
def test_with_requirepass_commands_before_auth_are_auth_required(locked, command, fields):
    assert_error(locked.run(command, **fields), "AUTH_REQUIRED")
    assert len(locked.store) == 0
    assert locked.blocked_clients() == 0


def test_with_requirepass_ping_is_allowed_before_auth(locked):
    assert locked.run("PING") == {"status": "OK", "message": "PONG"}


def test_auth_with_a_wrong_password_is_auth_failed(locked):
    assert_error(locked.run("AUTH", value="wrong"), "AUTH_FAILED")
    assert_error(locked.run("GET", key="k"), "AUTH_REQUIRED")


def test_auth_with_the_right_password_unlocks_the_connection(locked):
    assert locked.run("AUTH", value="s3cret") == {"status": "OK"}
    locked.ok("SET", key="k", value="v")
    assert locked.value("GET", key="k") == "v"


def test_auth_accepts_the_password_as_bin(locked):
    locked.ok("AUTH", value=b"s3cret")
    locked.ok("INFO")


def test_auth_unlocks_only_the_connection_that_sent_it(locked):
    locked.ok("AUTH", value="s3cret")
    other = locked.new_context()
    assert_error(locked.run("GET", key="k", ctx=other), "AUTH_REQUIRED")


def test_auth_without_a_password_is_bad_request_naming_the_field(locked):
    assert_error(locked.run("AUTH"), "BAD_REQUEST", "value")


def test_auth_when_no_password_is_configured_is_auth_failed(h):
    assert_error(h.run("AUTH", value="anything"), "AUTH_FAILED")
    h.ok("SET", key="k", value="still works")


def test_a_wrong_auth_after_a_right_one_leaves_the_connection_authenticated(locked):
    locked.ok("AUTH", value="s3cret")
    assert_error(locked.run("AUTH", value="wrong"), "AUTH_FAILED")
    locked.ok("SET", key="k", value="v")
