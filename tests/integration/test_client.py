"""geomys.Client and Pipeline against real geomys processes: every method, every error class, threads, reconnects."""

import threading

import pytest

from geomys import Client, GeomysError, Pipeline
from geomys.client import GeomysConnectionError
from geomys.errors import (AuthFailed, AuthRequired, BadRequest, KeyExists, NotFound, NotInteger, Overflow,
                           Timeout, UnknownCommand, WrongType)
from tests.helpers import HOST, free_port, wait_until

pytestmark = pytest.mark.integration

INT64_MAX = 2**63 - 1


@pytest.fixture
def client(server):
    with Client(HOST, server.port, timeout=10) as client:
        yield client


def blocked_clients(server) -> int:
    return server.info()["blocked_clients"]


# -- one method per command ------------------------------------------------------

def test_ping_returns_pong(client):
    assert client.ping() == "PONG"


def test_echo_returns_the_message(client):
    assert client.echo("hello there") == "hello there"


def test_set_returns_true_and_get_returns_the_value(client):
    assert client.set("name", "john doe") is True
    assert client.get("name") == "john doe"


def test_set_with_exp_expires_the_key_after_its_ttl(client):
    assert client.set("short", "lived", exp=100) is True
    assert client.get("short") == "lived"
    wait_until(lambda: not client.exists("short"), timeout=5, message="the key to expire")
    with pytest.raises(NotFound):
        client.get("short")


def test_incr_returns_the_new_value_as_an_int(client):
    assert client.incr("hits") == 1
    assert client.incr("hits", 10) == 11
    assert client.incr("hits", offset=0) == 11
    assert client.get("hits") == "11"


def test_push_then_lpop_and_rpop_take_from_the_front_and_the_rear(client):
    for value in ("1", "2", "3"):
        assert client.push("queue", value) is True
    assert client.llen("queue") == 3
    assert client.lpop("queue") == "1"
    assert client.rpop("queue") == "3"
    assert client.llen("queue") == 1


def test_llen_of_an_absent_list_is_zero(client):
    assert client.llen("nothing") == 0


def test_blpop_returns_an_element_already_there(client):
    client.push("jobs", "a")
    client.push("jobs", "b")
    assert client.blpop("jobs", 1) == "a"
    assert client.brpop("jobs", 1) == "b"


@pytest.mark.parametrize("method, expected", [("blpop", "first"), ("brpop", "second")])
def test_blocking_pop_waits_for_a_push_from_another_client(server, client, method, expected):
    results = []
    with Client(HOST, server.port, timeout=10) as waiter:
        thread = threading.Thread(target=lambda: results.append(getattr(waiter, method)("inbox", 10)))
        thread.start()
        wait_until(lambda: blocked_clients(server) == 1, timeout=10, message="the pop to block")
        pipe = client.pipeline()
        pipe.push("inbox", "first").push("inbox", "second")
        assert pipe.execute() == [True, True]
        thread.join(10)
    assert results == [expected]


def test_delete_returns_one_if_removed_and_zero_if_absent(client):
    client.set("k", "v")
    assert client.delete("k") == 1
    assert client.delete("k") == 0
    assert client.exists("k") is False


def test_exists_returns_a_bool(client):
    assert client.exists("k") is False
    client.push("k", "v")
    assert client.exists("k") is True


def test_flushdb_removes_every_key(client):
    client.set("a", "1")
    client.push("b", "2")
    assert client.flushdb() is True
    assert (client.exists("a"), client.exists("b")) == (False, False)
    assert client.info()["keys"] == 0


def test_info_returns_a_dict_with_the_spec_fields(client):
    client.set("a", "1")
    info = client.info()
    assert info["role"] == "standalone"
    assert info["keys"] == 1
    assert isinstance(info["persistence"], dict)
    assert {"version", "node_id", "leader_id", "term", "connected_clients", "commands_processed",
            "replication_offset"} <= set(info)


def test_compact_returns_true(client):
    assert client.compact() is True


def test_execute_sends_any_command_and_returns_the_reply_map(client):
    assert client.execute("set", key="k", value="v") == {"status": "OK"}
    assert client.execute("GET", key="k") == {"status": "OK", "value": "v"}


def test_execute_accepts_integers_as_decimal_strings(client):
    assert client.execute("INCR", key="n", offset="7")["value"] == 7


# -- errors: one class per wire code ------------------------------------------------

def test_set_on_an_existing_key_raises_key_exists_and_keeps_the_value(client):
    client.set("k", "old")
    with pytest.raises(KeyExists) as info:
        client.set("k", "new")
    assert info.value.code == "KEY_EXISTS" and "'k'" in info.value.message
    assert client.get("k") == "old"


def test_get_of_a_missing_key_raises_not_found(client):
    with pytest.raises(NotFound) as info:
        client.get("ghost")
    assert "'ghost'" in str(info.value)


def test_pop_of_a_missing_list_raises_not_found(client):
    with pytest.raises(NotFound):
        client.lpop("ghost")
    with pytest.raises(NotFound):
        client.rpop("ghost")


def test_get_of_a_list_raises_wrong_type(client):
    client.push("list", "x")
    with pytest.raises(WrongType):
        client.get("list")


def test_list_commands_on_a_string_raise_wrong_type_and_change_nothing(client):
    client.set("text", "x")
    for call in (lambda: client.push("text", "y"), lambda: client.lpop("text"), lambda: client.llen("text"),
                 lambda: client.blpop("text", 0.1)):
        with pytest.raises(WrongType):
            call()
    assert client.get("text") == "x"


def test_incr_of_a_non_integer_raises_not_integer(client):
    client.set("word", "abc")
    with pytest.raises(NotInteger):
        client.incr("word")


def test_incr_beyond_signed_64_bits_raises_overflow_and_keeps_the_value(client):
    client.set("big", str(INT64_MAX))
    with pytest.raises(Overflow):
        client.incr("big")
    assert client.get("big") == str(INT64_MAX)


def test_incr_with_a_negative_offset_raises_bad_request(client):
    with pytest.raises(BadRequest) as info:
        client.incr("n", -1)
    assert "offset" in info.value.message
    assert client.exists("n") is False


def test_blpop_with_nothing_pushed_raises_timeout(client):
    with pytest.raises(Timeout):
        client.blpop("empty", 0.2)
    with pytest.raises(Timeout):
        client.brpop("empty", 0.2)


def test_blocking_pop_longer_than_the_client_timeout_still_gets_the_server_reply(server):
    with Client(HOST, server.port, timeout=0.3) as client:
        with pytest.raises(Timeout):
            client.blpop("empty", 0.8)
        assert client.ping() == "PONG"


def test_unknown_command_raises_unknown_command(client):
    with pytest.raises(UnknownCommand):
        client.execute("FROBNICATE")


def test_every_error_class_is_a_geomys_error(client):
    with pytest.raises(GeomysError):
        client.get("ghost")


def test_commands_without_auth_raise_auth_required_but_ping_works(start_server):
    server = start_server(requirepass="secret")
    with Client(HOST, server.port, timeout=10) as client:
        assert client.ping() == "PONG"
        with pytest.raises(AuthRequired):
            client.get("k")
        with pytest.raises(AuthFailed):
            client.auth("wrong")
        assert client.auth("secret") is True
        assert client.set("k", "v") is True


def test_client_with_the_password_authenticates_on_connect(start_server):
    server = start_server(requirepass="secret")
    with Client(HOST, server.port, password="secret", timeout=10) as client:
        assert client.set("k", "v") is True
        assert client.get("k") == "v"


def test_client_with_a_wrong_password_raises_auth_failed(start_server):
    server = start_server(requirepass="secret")
    with Client(HOST, server.port, password="nope", timeout=10) as client:
        with pytest.raises(AuthFailed):
            client.get("k")


# -- pipeline ------------------------------------------------------------------------

def test_pipeline_returns_every_result_in_order(client):
    pipe = client.pipeline()
    assert isinstance(pipe, Pipeline)
    pipe.set("a", "1").incr("a", 4).get("a").push("l", "x").llen("l").exists("a").delete("a").echo("e").ping()
    assert len(pipe) == 9
    assert pipe.execute() == [True, 5, "5", True, 1, True, 1, "e", "PONG"]
    assert len(pipe) == 0


def test_pipeline_without_raise_on_error_returns_errors_in_place(client):
    client.set("k", "v")
    pipe = client.pipeline()
    pipe.set("k", "again").incr("n").get("missing").execute_command("GET", key="k")
    results = pipe.execute(raise_on_error=False)
    assert isinstance(results[0], KeyExists)
    assert results[1] == 1
    assert isinstance(results[2], NotFound)
    assert results[3] == {"status": "OK", "value": "v"}


def test_pipeline_raises_the_first_error_after_running_every_command(client):
    client.set("k", "v")
    pipe = client.pipeline()
    pipe.get("missing").set("k", "again").incr("n")
    with pytest.raises(NotFound):
        pipe.execute()
    assert client.get("n") == "1"
    assert client.ping() == "PONG"


def test_pipeline_context_manager_discards_commands_not_executed(client):
    with client.pipeline() as pipe:
        pipe.set("never", "sent")
    assert len(pipe) == 0
    assert client.exists("never") is False


def test_pipeline_context_manager_runs_commands_executed_inside(client):
    with client.pipeline() as pipe:
        assert pipe.set("a", "1").get("a").execute() == [True, "1"]


def test_empty_pipeline_returns_an_empty_list(client):
    assert client.pipeline().execute() == []


# -- values, threads, connections -------------------------------------------------------

def test_bin_values_round_trip_as_bytes(client):
    raw = bytes(range(256))
    assert client.set("blob", raw) is True
    assert client.get("blob") == raw
    client.push("blobs", b"\x00\xff")
    assert client.lpop("blobs") == b"\x00\xff"


def test_unicode_strings_round_trip_as_str(client):
    client.set("clé", "naïve ☃")
    assert client.get("clé") == "naïve ☃"


def test_one_client_shared_by_eight_threads_counts_every_incr(client):
    barrier = threading.Barrier(8)
    failures = []

    def work():
        try:
            barrier.wait(10)
            for _ in range(200):
                client.incr("shared")
        except Exception as exc:  # reported below; a thread cannot fail the test itself
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert client.get("shared") == "1600"


def test_client_reconnects_on_the_first_call_after_a_server_restart(server, start_server):
    client = Client(HOST, server.port, timeout=10)
    assert client.set("before", "restart") is True
    assert server.stop() == 0
    restarted = start_server(port=server.port)
    assert client.incr("after") == 1
    assert restarted.call("GET", key="after")["value"] == "1"  # sent once, not twice
    client.close()


def test_call_while_the_server_is_down_raises_connection_error_then_works_once_it_is_back(server, start_server):
    client = Client(HOST, server.port, timeout=10)
    assert client.ping() == "PONG"
    server.stop()
    with pytest.raises(ConnectionError) as info:
        client.ping()
    assert isinstance(info.value, GeomysConnectionError)
    start_server(port=server.port)
    assert client.ping() == "PONG"
    client.close()


def test_password_is_sent_again_after_a_reconnect(start_server):
    server = start_server(requirepass="secret")
    client = Client(HOST, server.port, timeout=10)
    client.auth("secret")
    client.set("k", "v")
    server.stop()
    start_server(port=server.port, requirepass="secret")
    assert client.set("k", "again") is True
    client.close()


def test_dead_port_raises_connection_error_naming_the_address():
    port = free_port()
    with Client(HOST, port, timeout=5) as client:
        with pytest.raises(ConnectionError) as info:
            client.ping()
    assert "%s:%d" % (HOST, port) in str(info.value)
    assert "refused" in str(info.value).lower()


def test_close_from_another_thread_wakes_a_blocking_pop_with_connection_error(server):
    errors = []
    client = Client(HOST, server.port)

    def pop():
        try:
            client.blpop("never", 0)
        except ConnectionError as exc:
            errors.append(exc)

    thread = threading.Thread(target=pop)
    thread.start()
    wait_until(lambda: blocked_clients(server) == 1, timeout=10, message="the pop to block")
    client.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], GeomysConnectionError)
    assert client.ping() == "PONG"
    client.close()


def test_client_is_a_context_manager_that_reopens_when_used_again(server):
    with Client(HOST, server.port, timeout=10) as client:
        assert client.ping() == "PONG"
    assert client.ping() == "PONG"
    client.close()
