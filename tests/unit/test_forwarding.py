"""Batching a follower's writes across clients (geomys.cluster.forwarding.ForwardBatcher).

A fake call stands in for the Forward RPC; client threads are real, and every
wait is bounded.
"""

import threading

import pytest

from geomys.cluster import forwarding
from geomys.errors import NoLeader
from tests.fakes import THREAD_TIMEOUT
from tests.helpers import wait_until


class FakeLeader:
    """Answers each request with its own value; the first call can be held until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[list] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.hold_first = hold_first
        self.fail = None

    def __call__(self, address: str, requests: list) -> list:
        self.calls.append(list(requests))
        if self.hold_first and len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(THREAD_TIMEOUT)
        if self.fail:
            raise self.fail
        return [{"status": "OK", "value": r} for r in requests], len(self.calls)


def submit_in_thread(batcher, requests, results, name):
    thread = threading.Thread(target=lambda: results.__setitem__(name, batcher.submit("leader:1", requests)[0]))
    thread.start()
    return thread


def test_each_client_gets_the_replies_to_its_own_writes_in_order():
    batcher = forwarding.ForwardBatcher(FakeLeader())
    assert batcher.submit("leader:1", ["a", "b", "c"]) == ([{"status": "OK", "value": v} for v in "abc"], 1)


def test_writes_queued_while_the_call_slots_are_busy_go_in_one_call(monkeypatch):
    monkeypatch.setattr(forwarding, "MAX_CALLS", 1)
    leader = FakeLeader(hold_first=True)
    batcher = forwarding.ForwardBatcher(leader)
    results: dict = {}
    first = submit_in_thread(batcher, ["first"], results, "first")
    assert leader.entered.wait(THREAD_TIMEOUT)
    others = [submit_in_thread(batcher, ["w%d-a" % i, "w%d-b" % i], results, i) for i in range(5)]
    wait_until(lambda: batcher.queued == 10, THREAD_TIMEOUT,
               message="five clients to queue their writes")
    leader.release.set()
    for thread in [first] + others:
        thread.join(THREAD_TIMEOUT)
        assert not thread.is_alive()
    assert len(leader.calls) == 2 and len(leader.calls[1]) == 10      # five clients, one call
    for i in range(5):
        assert [r["value"] for r in results[i]] == ["w%d-a" % i, "w%d-b" % i]


def test_a_failed_call_fails_every_write_of_its_batch_and_the_next_one_still_runs():
    leader = FakeLeader()
    batcher = forwarding.ForwardBatcher(leader)
    leader.fail = NoLeader("gone")
    with pytest.raises(NoLeader):
        batcher.submit("leader:1", ["x"])
    leader.fail = None
    assert batcher.submit("leader:1", ["y"])[0] == [{"status": "OK", "value": "y"}]
