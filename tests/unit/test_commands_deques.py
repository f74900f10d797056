"""PUSH, LPOP, RPOP, LLEN and the blocking BLPOP/BRPOP through the Engine.

Blocking pops run `engine.execute` on helper threads (tests.fakes.Call);
the FakeClock decides when a timeout has passed, and every join is bounded.
"""

import pytest

from geomys.engine import ClientGone
from tests.fakes import Call, Harness, RecordingSink, assert_error
from tests.helpers import wait_until


@pytest.fixture
def h():
    return Harness()


def push_all(h, key, *values):
    for value in values:
        h.ok("PUSH", key=key, value=value)


def blocked(h, count):
    """Wait until exactly `count` clients are blocked in the engine."""
    wait_until(lambda: h.blocked_clients() == count, timeout=5, interval=0.005,
               message="%d blocked clients" % count)


# -- PUSH / LPOP / RPOP / LLEN ---------------------------------------------------

def test_push_appends_at_the_rear_so_lpop_gives_the_first_and_rpop_the_last(h):
    push_all(h, "q", "1", "2", "3")
    assert h.value("LPOP", key="q") == "1"
    assert h.value("RPOP", key="q") == "3"
    assert h.value("LLEN", key="q") == 1
    assert h.value("LPOP", key="q") == "2"


def test_push_replies_plain_ok(h):
    assert h.run("PUSH", key="q", value="x") == {"status": "OK"}


def test_a_list_that_becomes_empty_disappears(h):
    push_all(h, "q", "only")
    h.ok("RPOP", key="q")
    assert h.value("EXISTS", key="q") == 0
    assert h.value("LLEN", key="q") == 0
    assert h.value("INFO")["keys"] == 0
    h.ok("SET", key="q", value="now a string")


@pytest.mark.parametrize("command", ["LPOP", "RPOP"])
def test_pop_of_a_missing_list_is_not_found_naming_the_key(h, command):
    assert_error(h.run(command, key="nolist"), "NOT_FOUND", "nolist")


def test_llen_of_an_absent_key_is_zero(h):
    assert h.value("LLEN", key="absent") == 0


def test_push_on_a_string_is_wrong_type_and_the_string_is_unchanged(h):
    h.ok("SET", key="s", value="text")
    assert_error(h.run("PUSH", key="s", value="x"), "WRONG_TYPE", "s")
    assert h.value("GET", key="s") == "text"


@pytest.mark.parametrize("command", ["LPOP", "RPOP", "LLEN"])
def test_list_reads_on_a_string_are_wrong_type_and_change_nothing(h, command):
    h.ok("SET", key="s", value="text")
    assert_error(h.run(command, key="s"), "WRONG_TYPE", "s")
    assert h.value("GET", key="s") == "text"


def test_push_without_a_value_is_bad_request_naming_the_field(h):
    assert_error(h.run("PUSH", key="q"), "BAD_REQUEST", "value")
    assert h.value("EXISTS", key="q") == 0


def test_push_with_an_ill_typed_value_is_bad_request_naming_the_field(h):
    assert_error(h.run("PUSH", key="q", value=["nested"]), "BAD_REQUEST", "value")
    assert h.value("EXISTS", key="q") == 0


def test_bin_elements_round_trip_as_bytes(h):
    push_all(h, "q", b"\x00\xff", "text")
    assert h.value("LPOP", key="q") == b"\x00\xff"
    assert h.value("LPOP", key="q") == "text"


def test_a_pushed_list_has_no_ttl_from_an_expired_string(h):
    h.ok("SET", key="k", value="v", exp=10)
    h.clock.advance(1)
    h.ok("PUSH", key="k", value="x")
    h.clock.advance(3600)
    assert h.value("LLEN", key="k") == 1


# -- BLPOP / BRPOP ------------------------------------------------------------

def blpop(h, key, timeout, command="BLPOP", **ctx_kwargs) -> Call:
    ctx = h.new_context(**ctx_kwargs) if ctx_kwargs else None
    return Call(h, {"command": command, "key": key, "timeout": timeout}, ctx).start()


@pytest.mark.parametrize("command, expected", [("BLPOP", "1"), ("BRPOP", "3")])
def test_blocking_pop_of_a_non_empty_list_returns_at_once(h, command, expected):
    push_all(h, "q", "1", "2", "3")
    assert h.run(command, key="q", timeout=0) == {"status": "OK", "value": expected}
    assert h.value("LLEN", key="q") == 2


def test_blpop_times_out_with_timeout_naming_the_key(h):
    call = blpop(h, "q", 0.05)
    blocked(h, 1)
    h.clock.advance(1)
    call.join()
    assert_error(call.reply, "TIMEOUT", "q")
    assert h.blocked_clients() == 0


def test_blpop_waits_until_its_timeout_has_passed(h):
    call = blpop(h, "q", 10)
    blocked(h, 1)
    h.clock.advance(9)
    assert not call.done()
    h.ok("PUSH", key="q", value="late")
    assert call.join().reply == {"status": "OK", "value": "late"}


def test_blpop_is_woken_by_a_push_from_another_thread(h):
    call = blpop(h, "q", 0)
    blocked(h, 1)
    pusher = Call(h, {"command": "PUSH", "key": "q", "value": "hello"}).start().join()
    assert pusher.reply == {"status": "OK"}
    assert call.join().reply == {"status": "OK", "value": "hello"}
    assert h.value("LLEN", key="q") == 0


def test_brpop_takes_the_last_element_pushed_while_it_waited(h):
    call = blpop(h, "q", 0, command="BRPOP")
    blocked(h, 1)
    h.ok("PUSH", key="q", value="only")
    assert call.join().reply == {"status": "OK", "value": "only"}


def test_three_waiters_are_served_first_come_first_served(h):
    calls = []
    for i in range(3):
        calls.append(blpop(h, "q", 0))
        blocked(h, i + 1)
    push_all(h, "q", "1", "2", "3")
    assert [call.join().reply["value"] for call in calls] == ["1", "2", "3"]
    assert h.value("LLEN", key="q") == 0


def test_one_push_wakes_exactly_one_waiter(h):
    first, second = blpop(h, "q", 0), None
    blocked(h, 1)
    second = blpop(h, "q", 0)
    blocked(h, 2)
    h.ok("PUSH", key="q", value="one")
    assert first.join().reply == {"status": "OK", "value": "one"}
    blocked(h, 1)
    assert not second.done()
    assert h.value("LLEN", key="q") == 0
    h.ok("PUSH", key="q", value="two")
    assert second.join().reply == {"status": "OK", "value": "two"}


def test_a_waiter_whose_client_left_takes_nothing_and_the_element_stays(h):
    connected = [True]
    call = blpop(h, "q", 0, is_connected=lambda: connected[0])
    blocked(h, 1)
    connected[0] = False
    h.ok("PUSH", key="q", value="keep me")
    call.join()
    assert isinstance(call.error, ClientGone)
    assert h.blocked_clients() == 0
    assert h.value("LPOP", key="q") == "keep me"


def test_a_departed_waiter_passes_the_element_to_the_next_one(h):
    connected = [True]
    gone = blpop(h, "q", 0, is_connected=lambda: connected[0])
    blocked(h, 1)
    staying = blpop(h, "q", 0)
    blocked(h, 2)
    connected[0] = False
    h.ok("PUSH", key="q", value="x")
    assert isinstance(gone.join().error, ClientGone)
    assert staying.join().reply == {"status": "OK", "value": "x"}


def test_blpop_on_a_string_key_is_wrong_type_and_changes_nothing(h):
    h.ok("SET", key="s", value="text")
    assert_error(h.run("BLPOP", key="s", timeout=0), "WRONG_TYPE", "s")
    assert h.value("GET", key="s") == "text"
    assert h.blocked_clients() == 0


def test_a_served_blpop_is_recorded_as_the_lpop_it_did(h):
    sink = RecordingSink()
    h.engine.add_sink(sink)
    call = blpop(h, "q", 0)
    blocked(h, 1)
    h.ok("PUSH", key="q", value="v")
    call.join()
    assert sink.appended == [(1, ("PUSH", "q", "v")), (2, ("LPOP", "q"))]


def test_a_served_brpop_is_recorded_as_an_rpop(h):
    sink = RecordingSink()
    h.engine.add_sink(sink)
    push_all(h, "q", "a", "b")
    h.ok("BRPOP", key="q", timeout=1)
    assert sink.records[-1] == ("RPOP", "q")


def test_a_timed_out_blpop_records_nothing(h):
    sink = RecordingSink()
    h.engine.add_sink(sink)
    call = blpop(h, "q", 0.05)
    blocked(h, 1)
    h.clock.advance(1)
    call.join()
    assert sink.appended == []


@pytest.mark.parametrize("timeout", [-1, "-0.5", "soon", "nan", "inf", float("nan"), True, [1]])
def test_blpop_with_a_bad_timeout_is_bad_request_naming_the_field(h, timeout):
    assert_error(h.run("BLPOP", key="q", timeout=timeout), "BAD_REQUEST", "timeout")
    assert h.blocked_clients() == 0


def test_blpop_without_a_timeout_is_bad_request_naming_the_field(h):
    assert_error(h.run("BLPOP", key="q"), "BAD_REQUEST", "timeout")


def test_blpop_timeout_may_be_a_decimal_string(h):
    push_all(h, "q", "v")
    assert h.value("BLPOP", key="q", timeout="0.5") == "v"
