"""DEL, EXISTS and FLUSHDB through the Engine, on strings, lists and expired keys."""

import pytest

from tests.fakes import Harness, assert_error


@pytest.fixture
def h():
    return Harness()


def test_del_of_a_string_returns_1_and_removes_it(h):
    h.ok("SET", key="k", value="v")
    assert h.value("DEL", key="k") == 1
    assert_error(h.run("GET", key="k"), "NOT_FOUND", "k")


def test_del_of_a_list_returns_1_and_removes_it(h):
    h.ok("PUSH", key="l", value="x")
    assert h.value("DEL", key="l") == 1
    assert h.value("LLEN", key="l") == 0


def test_del_of_an_absent_key_returns_0(h):
    assert h.value("DEL", key="absent") == 0


def test_del_of_an_expired_key_returns_0(h):
    h.ok("SET", key="k", value="v", exp=5)
    h.clock.advance(1)
    assert h.value("DEL", key="k") == 0


def test_exists_is_1_for_strings_and_lists_and_0_otherwise(h):
    h.ok("SET", key="s", value="v")
    h.ok("PUSH", key="l", value="x")
    assert h.value("EXISTS", key="s") == 1
    assert h.value("EXISTS", key="l") == 1
    assert h.value("EXISTS", key="nope") == 0


def test_exists_is_0_once_the_ttl_has_passed(h):
    h.ok("SET", key="k", value="v", exp=100)
    assert h.value("EXISTS", key="k") == 1
    h.clock.advance(0.1)
    assert h.value("EXISTS", key="k") == 0


def test_flushdb_removes_every_key_of_every_type(h):
    h.ok("SET", key="s", value="v", exp=10_000)
    h.ok("PUSH", key="l", value="x")
    h.ok("INCR", key="c")
    assert h.run("FLUSHDB") == {"status": "OK"}
    assert h.value("INFO")["keys"] == 0
    for key in ("s", "l", "c"):
        assert h.value("EXISTS", key=key) == 0
    h.ok("SET", key="s", value="again")


@pytest.mark.parametrize("command", ["DEL", "EXISTS"])
def test_key_commands_without_a_key_are_bad_request_naming_the_field(h, command):
    assert_error(h.run(command), "BAD_REQUEST", "key")
