"""SET and GET through the Engine (Store + FakeClock, no sockets): the
never-overwrite rule, TTLs, field checking and str/bin handling.
"""

import pytest

from tests.fakes import EPOCH_MS, Harness, assert_error


@pytest.fixture
def h():
    return Harness()


def test_set_then_get_returns_the_value(h):
    assert h.run("SET", key="name", value="john doe") == {"status": "OK"}
    assert h.run("GET", key="name") == {"status": "OK", "value": "john doe"}


def test_set_on_an_existing_string_is_key_exists_and_keeps_the_old_value(h):
    h.ok("SET", key="k", value="first")
    assert_error(h.run("SET", key="k", value="second"), "KEY_EXISTS", "k")
    assert h.value("GET", key="k") == "first"


def test_set_on_a_key_holding_a_list_is_key_exists_and_keeps_the_list(h):
    h.ok("PUSH", key="k", value="a")
    assert_error(h.run("SET", key="k", value="s"), "KEY_EXISTS", "k")
    assert h.value("LLEN", key="k") == 1
    assert h.value("LPOP", key="k") == "a"


def test_set_with_exp_stores_an_absolute_expiry(h):
    h.ok("SET", key="k", value="v", exp=1500)
    assert h.store.expire_at("k") == EPOCH_MS + 1500


def test_key_with_a_ttl_is_readable_until_the_ttl_has_passed(h):
    h.ok("SET", key="k", value="v", exp=100)
    h.clock.advance(0.099)
    assert h.value("GET", key="k") == "v"
    h.clock.advance(0.001)
    assert_error(h.run("GET", key="k"), "NOT_FOUND", "k")
    assert h.value("EXISTS", key="k") == 0


def test_an_expired_key_can_be_set_again(h):
    h.ok("SET", key="k", value="old", exp=10)
    h.clock.advance(1)
    h.ok("SET", key="k", value="new")
    assert h.value("GET", key="k") == "new"
    assert h.store.expire_at("k") is None


def test_set_exp_accepts_a_decimal_string(h):
    h.ok("SET", key="k", value="v", exp="250")
    assert h.store.expire_at("k") == EPOCH_MS + 250


@pytest.mark.parametrize("exp", [0, -5, "0", "-1", "abc", "", 1.5, "1.5", True, [100], {"ms": 1}])
def test_set_exp_that_is_not_a_positive_integer_is_bad_request(h, exp):
    assert_error(h.run("SET", key="k", value="v", exp=exp), "BAD_REQUEST", "exp")
    assert h.value("EXISTS", key="k") == 0


def test_set_exp_of_none_means_no_ttl(h):
    h.ok("SET", key="k", value="v", exp=None)
    assert h.store.expire_at("k") is None


def test_get_of_a_missing_key_is_not_found_naming_the_key(h):
    assert_error(h.run("GET", key="missing-key"), "NOT_FOUND", "missing-key")


def test_get_on_a_key_holding_a_list_is_wrong_type_and_changes_nothing(h):
    h.ok("PUSH", key="mylist", value="a")
    assert_error(h.run("GET", key="mylist"), "WRONG_TYPE", "mylist")
    assert h.value("LLEN", key="mylist") == 1


@pytest.mark.parametrize("field", ["key", "value"])
def test_set_without_a_required_field_is_bad_request_naming_it(h, field):
    request = {"key": "k", "value": "v"}
    del request[field]
    assert_error(h.run("SET", **request), "BAD_REQUEST", field)
    assert len(h.store) == 0


def test_get_without_a_key_is_bad_request_naming_the_field(h):
    assert_error(h.run("GET"), "BAD_REQUEST", "key")


@pytest.mark.parametrize("bad", [["a"], {"a": 1}, True])
@pytest.mark.parametrize("field", ["key", "value"])
def test_set_with_an_ill_typed_field_is_bad_request_naming_it(h, field, bad):
    request = {"key": "k", "value": "v", field: bad}
    assert_error(h.run("SET", **request), "BAD_REQUEST", field)
    assert len(h.store) == 0


def test_bin_value_round_trips_as_bytes(h):
    h.ok("SET", key="b", value=b"\x00\xff\x80raw")
    assert h.value("GET", key="b") == b"\x00\xff\x80raw"


def test_str_value_comes_back_as_str(h):
    h.ok("SET", key="s", value="caf\u00e9")
    value = h.value("GET", key="s")
    assert value == "caf\u00e9" and type(value) is str


def test_bin_key_that_is_utf8_names_the_same_key_as_the_str(h):
    h.ok("SET", key=b"caf\xc3\xa9", value="v")
    assert h.value("GET", key="caf\u00e9") == "v"
    assert_error(h.run("SET", key="caf\u00e9", value="w"), "KEY_EXISTS")


def test_bin_key_that_is_not_utf8_is_a_key_of_its_own(h):
    h.ok("SET", key=b"\xff\xfe", value="v")
    assert h.value("GET", key=b"\xff\xfe") == "v"
    assert_error(h.run("GET", key="\xff\xfe"), "NOT_FOUND")


def test_empty_key_and_empty_value_are_ordinary(h):
    h.ok("SET", key="", value="")
    assert h.value("GET", key="") == ""


def test_a_number_given_as_value_is_stored_as_its_decimal_text(h):
    h.ok("SET", key="n", value=42)
    assert h.value("GET", key="n") == "42"
