"""The Engine's single execute path: request shape, command lookup, error
mapping, effect records and their numbering, settle and sweeping.

Engine(Store(), FakeClock()) only: no sockets, no sleeps.
"""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from geomys.commands import BLOCKING, TABLE
from geomys.errors import BY_CODE, NoLeader
from tests.fakes import EPOCH_MS, FakeClock, Harness, RecordingSink, assert_error

ERROR_CODES = set(BY_CODE)


@pytest.fixture
def h():
    return Harness()


@pytest.fixture
def sink(h):
    recording = RecordingSink()
    h.engine.add_sink(recording)
    return recording


# -- request shape ------------------------------------------------------------

@pytest.mark.parametrize("request_", [["PING"], 5, "PING", None, b"PING", 1.5, True])
def test_a_request_that_is_not_a_map_is_bad_request(h, request_):
    assert_error(h.engine.execute(request_, h.ctx), "BAD_REQUEST")


def test_a_map_without_command_is_bad_request_naming_the_field(h):
    assert_error(h.engine.execute({"key": "k"}, h.ctx), "BAD_REQUEST", "command")


@pytest.mark.parametrize("name", [5, None, True, ["GET"], {"GET": 1}, 1.5])
def test_a_command_that_is_not_a_string_is_bad_request_naming_the_field(h, name):
    assert_error(h.engine.execute({"command": name, "key": "k"}, h.ctx), "BAD_REQUEST", "command")


def test_an_unknown_command_is_unknown_command_naming_it(h):
    assert_error(h.run("FROBNICATE", key="k"), "UNKNOWN_COMMAND", "FROBNICATE")


@pytest.mark.parametrize("name", ["get", "Get", "gEt", "GET"])
def test_command_names_are_case_insensitive(h, name):
    h.ok("SET", key="k", value="v")
    assert h.run(name, key="k") == {"status": "OK", "value": "v"}


def test_fields_a_command_does_not_take_are_ignored(h):
    assert h.run("PING", key="k", extra=[1, 2]) == {"status": "OK", "message": "PONG"}


def test_a_field_name_that_is_not_a_string_is_ignored_like_any_unknown_field(h):
    assert h.engine.execute({"command": "PING", 1: "one"}, h.ctx)["message"] == "PONG"


def test_an_unexpected_exception_becomes_internal_and_the_engine_keeps_serving(h):
    def broken():
        raise RuntimeError("boom")
    h.engine.set_compactor(broken)
    assert_error(h.run("COMPACT"), "INTERNAL")
    assert h.run("PING")["message"] == "PONG"
    h.ok("SET", key="k", value="v")


def test_every_request_counts_as_a_processed_command_even_a_failed_one(h):
    h.run("GET", key="missing")
    h.engine.execute([], h.ctx)
    h.run("NOPE")
    assert h.value("INFO")["commands_processed"] == 4


# -- effects and their numbering ----------------------------------------------

def test_without_a_sink_nothing_is_recorded(h):
    h.ok("SET", key="k", value="v")
    assert h.store.effects == []
    assert h.value("INFO")["replication_offset"] == 0


def test_write_records_are_numbered_consecutively_from_one(h, sink):
    h.ok("SET", key="a", value="1")
    h.ok("PUSH", key="l", value="x")
    h.ok("LPOP", key="l")
    h.ok("DEL", key="a")
    h.ok("FLUSHDB")
    assert sink.appended == [
        (1, ("SET", "a", "1", None)),
        (2, ("PUSH", "l", "x")),
        (3, ("LPOP", "l")),
        (4, ("DEL", "a")),
        (5, ("FLUSHDB",)),
    ]
    assert h.value("INFO")["replication_offset"] == 5


def test_a_failed_set_produces_no_record(h, sink):
    h.ok("SET", key="k", value="v")
    assert_error(h.run("SET", key="k", value="w"), "KEY_EXISTS", "k")
    assert_error(h.run("SET", key="x"), "BAD_REQUEST", "value")
    assert sink.records == [("SET", "k", "v", None)]


@pytest.mark.parametrize("command, fields", [
    ("GET", {"key": "s"}), ("EXISTS", {"key": "s"}), ("LLEN", {"key": "l"}), ("PING", {}),
    ("INFO", {}), ("ECHO", {"message": "m"}), ("DEL", {"key": "absent"}),
    ("INCR", {"key": "l"}), ("PUSH", {"key": "s", "value": "x"}), ("LPOP", {"key": "absent"}),
])
def test_reads_and_failed_writes_produce_no_record(h, sink, command, fields):
    h.ok("SET", key="s", value="v")
    h.ok("PUSH", key="l", value="x")
    before = list(sink.appended)
    h.run(command, **fields)
    assert sink.appended == before


def test_set_with_exp_is_recorded_with_an_absolute_expiry(h, sink):
    h.ok("SET", key="k", value="v", exp=2000)
    assert sink.records == [("SET", "k", "v", EPOCH_MS + 2000)]


def test_incr_is_recorded_as_a_set_of_the_new_value_keeping_the_ttl(h, sink):
    h.ok("SET", key="c", value="1", exp=5000)
    h.clock.advance(1)
    h.ok("INCR", key="c", offset=4)
    assert sink.records[-1] == ("SET", "c", "5", EPOCH_MS + 5000)


def test_a_read_that_finds_an_expired_key_records_its_deletion(h, sink):
    h.ok("SET", key="k", value="v", exp=10)
    h.clock.advance(1)
    assert_error(h.run("GET", key="k"), "NOT_FOUND", "k")
    assert sink.records[-1] == ("DEL", "k")


def test_sweep_expired_deletes_unread_expired_keys_and_records_them(h, sink):
    for i in range(5):
        h.ok("SET", key="t%d" % i, value="v", exp=100)
    h.ok("SET", key="keep", value="v")
    h.clock.advance(0.1)
    assert h.engine.sweep_expired() == 5
    assert h.value("INFO")["keys"] == 1
    assert sorted(sink.records[-5:]) == [("DEL", "t%d" % i) for i in range(5)]


def test_settle_waits_on_every_sink_for_the_newest_record_the_client_saw(h, sink):
    other = RecordingSink()
    h.engine.add_sink(other)
    h.ok("SET", key="a", value="1")
    h.ok("SET", key="b", value="2")
    h.engine.settle(h.ctx)
    assert sink.waited == [2] and other.waited == [2]


def test_a_read_after_another_clients_write_settles_on_that_write(h, sink):
    writer = h.new_context()
    h.run("SET", ctx=writer, key="k", value="v")
    assert h.run("GET", key="k")["value"] == "v"
    h.engine.settle(h.ctx)
    assert sink.waited == [1]


def test_a_write_is_confirmed_on_the_records_up_to_it_not_on_those_of_reads_after_it(h, sink):
    h.ok("SET", key="old", value="v", exp=1)
    h.clock.advance(0.01)
    replies = []
    h.engine.execute_batch([{"command": "SET", "key": "new", "value": "v"},
                            {"command": "GET", "key": "old"}], h.ctx, replies)
    assert sink.records[-2:] == [("SET", "new", "v", None), ("DEL", "old")]
    assert (h.ctx.write_seq, h.ctx.wait_seq) == (2, 3)


def test_a_request_refused_before_the_lock_keeps_its_place_among_the_replies(h):
    replies = []
    h.engine.execute_batch([{"command": "SET", "key": "a", "value": "1"},
                            {"command": "SET", "key": "b"},
                            {"command": "NOPE"},
                            {"command": "GET", "key": "a"}], h.ctx, replies)
    assert replies[0] == {"status": "OK"} and replies[3] == {"status": "OK", "value": "1"}
    assert_error(replies[1], "BAD_REQUEST", "value")
    assert_error(replies[2], "UNKNOWN_COMMAND", "NOPE")


def test_a_follower_forwards_each_run_of_writes_and_runs_the_reads_between_them_in_order(h):
    h.ok("SET", key="r", value="here")
    forwarded = []

    def forwarder(requests, ctx):
        forwarded.append([request["key"] for request in requests])
        return [{"status": "OK", "value": "from the leader"}] * len(requests)

    h.engine.forwarder = forwarder
    requests = [{"command": "SET", "key": "w1", "value": "v"}, {"command": "GET", "key": "r"},
                {"command": "INCR", "key": "w2"}, {"command": "SET", "key": "w3", "value": "v"},
                {"command": "GET", "key": "r"}, {"command": "SET", "key": "w4"}]
    replies = []
    h.engine.execute_batch(requests, h.ctx, replies)
    assert forwarded == [["w1"], ["w2", "w3"]]
    assert [reply.get("value") for reply in replies[:5]] == ["from the leader", "here", "from the leader",
                                                             "from the leader", "here"]
    assert_error(replies[5], "BAD_REQUEST", "value")  # refused here, never forwarded


def test_a_follower_still_forwards_its_writes_after_max_memory_is_lifted(h):
    forwarded = []
    h.engine.forwarder = lambda requests, ctx: forwarded.extend(requests) or [{"status": "OK"}] * len(requests)
    h.engine.set_max_memory(1 << 40, 0)
    h.engine.set_max_memory(0, 0)
    h.ok("SET", key="w", value="v")
    assert [request["key"] for request in forwarded] == ["w"] and h.store.peek("w") is None


class CountingClock(FakeClock):
    """A FakeClock that counts its wall_ms reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def wall_ms(self) -> int:
        self.reads += 1
        return super().wall_ms()


def test_a_hold_reads_the_clock_only_while_some_key_has_a_ttl(h):
    h.engine.clock = clock = CountingClock()
    h.ok("SET", key="plain", value="v")
    assert h.value("GET", key="plain") == "v" and clock.reads == 0
    h.ok("SET", key="brief", value="v", exp=1000)  # a TTL is measured from the clock, not from 0
    assert clock.reads == 1 and h.store.expire_at("brief") == EPOCH_MS + 1000
    assert h.value("GET", key="plain") == "v" and clock.reads == 2  # a key has a TTL now
    clock.advance(1.0)
    assert_error(h.run("GET", key="brief"), "NOT_FOUND", "brief")  # expired, and deleted by the read
    reads = clock.reads
    assert h.value("GET", key="plain") == "v" and clock.reads == reads
    clock.advance(5.0)  # no hold since the last TTL went has kept an old instant
    h.ok("SET", key="later", value="v", exp=1000)
    assert h.store.expire_at("later") == clock.wall_ms() + 1000


def test_a_hold_reads_the_clock_once_for_every_ttl_it_sets(h):
    h.engine.clock = clock = CountingClock()
    replies = []
    h.engine.execute_batch([{"command": "SET", "key": "a", "value": "1"},
                            {"command": "SET", "key": "b", "value": "2", "exp": 5},
                            {"command": "GET", "key": "b"},
                            {"command": "SET", "key": "c", "value": "3", "exp": 7}], h.ctx, replies)
    assert [r["status"] for r in replies] == ["OK"] * 4 and replies[2]["value"] == "2"
    assert clock.reads == 1
    assert (h.store.expire_at("b"), h.store.expire_at("c")) == (EPOCH_MS + 5, EPOCH_MS + 7)
    clock.advance(0.006)
    assert_error(h.run("GET", key="b"), "NOT_FOUND", "b")
    assert h.value("GET", key="c") == "3"


def test_password_check_compares_exactly(h):
    locked = Harness(requirepass="pw")
    assert locked.engine.check_password("pw")
    assert locked.engine.check_password(b"pw")
    assert not locked.engine.check_password("pw ")
    assert not locked.engine.check_password("")
    assert not h.engine.check_password("")


# -- no request makes the engine fail internally -----------------------------

FIELD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8) | st.sampled_from(["1", "-1", "0", "1.5", "nan", "inf", "9" * 25, " 2"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)
NON_BLOCKING = sorted({spec.name for spec in TABLE.values() if BLOCKING not in spec.flags})
REQUESTS = st.fixed_dictionaries(
    {"command": st.sampled_from(NON_BLOCKING) | st.sampled_from(NON_BLOCKING).map(str.lower) | FIELD_VALUES},
    optional={name: FIELD_VALUES | st.sampled_from(["k", "l", "s"])
              for name in ("key", "value", "message", "offset", "exp", "timeout")})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REQUESTS, min_size=1, max_size=5))
def test_no_request_gets_an_internal_error(requests):
    h = Harness()
    h.ok("SET", key="s", value="text")
    h.ok("PUSH", key="l", value="x")
    for request in requests:
        reply = h.engine.execute(request, h.ctx)
        assert reply["status"] in ("OK", "ERROR"), reply
        if reply["status"] == "ERROR":
            assert reply["code"] in ERROR_CODES and reply["code"] != "INTERNAL", (request, reply)


# -- linearizable reads: the 'consistent' field and the read barrier ----------------------------

class Barrier:
    """A stand-in for a cluster node's read barrier: counts its calls, or fails them."""

    def __init__(self, error=None) -> None:
        self.calls = 0
        self.error = error

    def __call__(self, reads: int, floor: int) -> None:
        self.calls += 1
        self.reads, self.floor = reads, floor
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("command", ["GET", "LLEN", "EXISTS"])
@pytest.mark.parametrize("value", ["yes", 1, 0, "true", [True], {"a": 1}])
def test_a_read_whose_consistent_field_is_not_a_boolean_is_bad_request_naming_it(h, command, value):
    assert_error(h.engine.execute({"command": command, "key": "k", "consistent": value}, h.ctx),
                 "BAD_REQUEST", "consistent")


def test_standalone_accepts_consistent_on_reads_and_ignores_it_on_writes(h):
    assert h.engine.execute({"command": "SET", "key": "k", "value": "v", "consistent": "junk"}, h.ctx)["status"] == "OK"
    assert h.engine.execute({"command": "GET", "key": "k", "consistent": True}, h.ctx) == {"status": "OK", "value": "v"}
    assert h.engine.execute({"command": "EXISTS", "key": "k", "consistent": False}, h.ctx)["value"] == 1


def test_only_a_linearizable_read_passes_the_read_barrier_once_per_run(h):
    barrier = h.engine.read_barrier = Barrier()
    h.engine.execute({"command": "SET", "key": "k", "value": "v"}, h.ctx)
    h.engine.execute({"command": "GET", "key": "k"}, h.ctx)
    h.engine.execute({"command": "GET", "key": "k", "consistent": False}, h.ctx)
    assert barrier.calls == 0
    replies = []
    h.engine.execute_batch([{"command": "GET", "key": "k", "consistent": True},
                            {"command": "LLEN", "key": "l", "consistent": True}], h.ctx, replies)
    assert barrier.calls == 1 and barrier.reads == 2 and [r["status"] for r in replies] == ["OK", "OK"]


def test_read_consistency_linearizable_makes_reads_without_the_field_pass_the_barrier(h):
    barrier = h.engine.read_barrier = Barrier()
    h.engine.consistent_by_default = True
    h.engine.execute({"command": "EXISTS", "key": "k"}, h.ctx)
    assert barrier.calls == 1
    h.engine.execute({"command": "EXISTS", "key": "k", "consistent": False}, h.ctx)
    assert barrier.calls == 1


def test_a_failed_barrier_fails_the_linearizable_reads_only(h):
    h.engine.execute({"command": "SET", "key": "k", "value": "v"}, h.ctx)
    h.engine.read_barrier = Barrier(NoLeader("the leader was not confirmed"))
    replies = []
    h.engine.execute_batch([{"command": "GET", "key": "k"},
                            {"command": "GET", "key": "k", "consistent": True},
                            {"command": "SET", "key": "k2", "value": "w"}], h.ctx, replies)
    assert replies[0] == {"status": "OK", "value": "v"}
    assert_error(replies[1], "NO_LEADER", "not confirmed")
    assert replies[2]["status"] == "OK"
