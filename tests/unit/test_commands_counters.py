"""INCR through the Engine (Store + FakeClock): counters start at 0, only
increase, stay decimal strings, keep their TTL and never pass 2**63-1.
"""

import pytest

from tests.fakes import Harness, assert_error

INT64_MAX = 2**63 - 1


@pytest.fixture
def h():
    return Harness()


def test_incr_on_a_missing_key_starts_from_zero(h):
    assert h.value("INCR", key="c") == 1
    assert h.value("INCR", key="d", offset=5) == 5


def test_incr_without_offset_adds_one(h):
    h.ok("SET", key="c", value="10")
    assert h.value("INCR", key="c") == 11
    assert h.value("INCR", key="c") == 12


@pytest.mark.parametrize("offset", [3, "3", b"3"])
def test_incr_offset_may_be_an_int_or_a_decimal_string(h, offset):
    assert h.value("INCR", key="c", offset=offset) == 3


def test_incr_keeps_the_stored_form_a_decimal_string(h):
    h.ok("SET", key="c", value="1")
    assert h.value("INCR", key="c", offset=1) == 2
    assert h.value("GET", key="c") == "2"


def test_incr_of_a_fresh_counter_reads_back_as_a_string(h):
    h.ok("INCR", key="c", offset=7)
    assert h.value("GET", key="c") == "7"


def test_incr_by_zero_returns_the_current_value(h):
    h.ok("SET", key="c", value="41")
    assert h.value("INCR", key="c", offset=0) == 41


def test_incr_counts_up_from_a_negative_value(h):
    h.ok("SET", key="c", value="-5")
    assert h.value("INCR", key="c", offset=2) == -3


def test_incr_works_on_a_counter_stored_as_bin(h):
    h.ok("SET", key="c", value=b"41")
    assert h.value("INCR", key="c") == 42


@pytest.mark.parametrize("offset", [-1, "-1", -(2**63)])
def test_incr_with_a_negative_offset_is_bad_request_and_changes_nothing(h, offset):
    h.ok("SET", key="c", value="5")
    assert_error(h.run("INCR", key="c", offset=offset), "BAD_REQUEST", "offset")
    assert h.value("GET", key="c") == "5"


@pytest.mark.parametrize("offset", [1.5, "1.5", "abc", "", "1e3", True, [1], {"n": 1}, "\uff11"])
def test_incr_with_a_non_integer_offset_is_bad_request(h, offset):
    assert_error(h.run("INCR", key="c", offset=offset), "BAD_REQUEST", "offset")
    assert h.value("EXISTS", key="c") == 0


@pytest.mark.parametrize("stored", ["abc", "1.5", "", " 1", "01", "+1", "1e3", "0x10", "\u0661"])
def test_incr_on_a_non_numeric_string_is_not_integer_naming_the_key(h, stored):
    h.ok("SET", key="text", value=stored)
    assert_error(h.run("INCR", key="text"), "NOT_INTEGER", "text")
    assert h.value("GET", key="text") == stored


def test_incr_on_a_value_beyond_64_bits_is_not_integer(h):
    h.ok("SET", key="big", value="9" * 20)
    assert_error(h.run("INCR", key="big"), "NOT_INTEGER", "big")


def test_incr_past_int64_max_is_overflow_and_leaves_the_value_unchanged(h):
    h.ok("SET", key="c", value=str(INT64_MAX - 1))
    assert h.value("INCR", key="c") == INT64_MAX
    assert_error(h.run("INCR", key="c"), "OVERFLOW", "c")
    assert h.value("GET", key="c") == str(INT64_MAX)


def test_incr_with_a_huge_offset_is_overflow_and_leaves_the_value_unchanged(h):
    h.ok("SET", key="c", value="1")
    assert_error(h.run("INCR", key="c", offset=INT64_MAX), "OVERFLOW", "c")
    assert h.value("GET", key="c") == "1"


def test_incr_up_to_exactly_int64_max_succeeds(h):
    assert h.value("INCR", key="c", offset=INT64_MAX) == INT64_MAX


def test_incr_offset_beyond_64_bits_is_bad_request(h):
    assert_error(h.run("INCR", key="c", offset=str(2**63)), "BAD_REQUEST", "offset")


def test_incr_on_key_holding_a_deque_is_wrongtype(h):
    h.ok("PUSH", key="l", value="1")
    assert_error(h.run("INCR", key="l"), "WRONG_TYPE", "l")
    assert h.value("LPOP", key="l") == "1"


def test_incr_keeps_the_ttl(h):
    h.ok("SET", key="c", value="1", exp=1000)
    expire_at = h.store.expire_at("c")
    h.clock.advance(0.5)
    assert h.value("INCR", key="c") == 2
    assert h.store.expire_at("c") == expire_at
    h.clock.advance(0.5)
    assert_error(h.run("GET", key="c"), "NOT_FOUND", "c")


def test_incr_on_an_expired_counter_starts_again_from_zero(h):
    h.ok("SET", key="c", value="100", exp=10)
    h.clock.advance(1)
    assert h.value("INCR", key="c") == 1
    assert h.store.expire_at("c") is None


def test_incr_without_a_key_is_bad_request_naming_the_field(h):
    assert_error(h.run("INCR", offset=1), "BAD_REQUEST", "key")
