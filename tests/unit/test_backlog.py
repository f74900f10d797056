"""The replication backlog (geomys.cluster.replication.Backlog): what it keeps and what it can serve.

Pure bookkeeping: no sockets, no sleeps.
"""

from geomys.cluster.replication import Backlog


def payload(seq: int, size: int = 4) -> bytes:
    """A recognisable entry of exactly `size` bytes."""
    text = b"e%d-" % seq
    return (text * size)[:size]


def filled(first: int, last: int, term: int = 1, max_entries: int = 1000, max_bytes: int = 1 << 20,
           base=(0, 0), size: int = 4) -> Backlog:
    backlog = Backlog(max_entries, max_bytes)
    backlog.reset(*base)
    for seq in range(first, last + 1):
        backlog.append(seq, term, payload(seq, size))
    return backlog


# -- empty and reset ------------------------------------------------------------------------

def test_new_backlog_is_empty_and_starts_at_zero():
    backlog = Backlog(10, 100)
    assert len(backlog) == 0
    assert backlog.last == (0, 0)
    assert backlog.after(0, 10) == []


def test_empty_backlog_covers_exactly_its_base():
    backlog = Backlog(10, 100)
    backlog.reset(7, 3)
    assert backlog.covers(7, 3)
    assert not backlog.covers(7, 2)
    assert not backlog.covers(6, 3)
    assert not backlog.covers(8, 3)


def test_reset_forgets_every_entry_and_starts_after_the_snapshot():
    backlog = filled(1, 5)
    backlog.reset(40, 6)
    assert len(backlog) == 0
    assert backlog.last == (40, 6)
    assert backlog.after(40, 10) == []
    assert not backlog.covers(3, 1)
    assert backlog.covers(40, 6)


def test_entries_appended_after_a_reset_follow_the_snapshot():
    backlog = Backlog(10, 100)
    backlog.reset(40, 6)
    backlog.append(41, 6, b"x")
    assert backlog.after(40, 10) == [b"x"]
    assert backlog.last == (41, 6)


# -- append / after ------------------------------------------------------------------------------

def test_after_returns_the_entries_that_follow_a_seq_in_order():
    backlog = filled(1, 5)
    assert backlog.after(2, 10) == [payload(3), payload(4), payload(5)]


def test_after_the_base_returns_everything():
    backlog = filled(1, 3)
    assert backlog.after(0, 10) == [payload(1), payload(2), payload(3)]


def test_after_the_newest_entry_returns_nothing():
    backlog = filled(1, 5)
    assert backlog.after(5, 10) == []
    assert backlog.after(9, 10) == []


def test_after_returns_at_most_limit_entries():
    backlog = filled(1, 10)
    assert backlog.after(0, 3) == [payload(1), payload(2), payload(3)]


def test_after_stops_before_max_bytes():
    backlog = filled(1, 10, size=10)
    assert backlog.after(0, 100, max_bytes=25) == [payload(1, 10), payload(2, 10)]


def test_after_returns_one_entry_even_if_it_alone_exceeds_max_bytes():
    backlog = filled(1, 3, size=100)
    assert backlog.after(0, 100, max_bytes=10) == [payload(1, 100)]


def test_last_is_the_newest_entry_and_its_term():
    backlog = filled(1, 4, term=2)
    backlog.append(5, 3, b"new")
    assert backlog.last == (5, 3)


# -- term_at / covers ----------------------------------------------------------------------------

def test_term_at_knows_each_kept_entry_and_the_base():
    backlog = Backlog(10, 1000)
    backlog.reset(10, 1)
    backlog.append(11, 1, b"a")
    backlog.append(12, 2, b"b")
    backlog.append(13, 2, b"c")
    assert [backlog.term_at(s) for s in (10, 11, 12, 13)] == [1, 1, 2, 2]
    assert backlog.term_at(9) is None
    assert backlog.term_at(14) is None


def test_log_ending_at_a_kept_entry_with_its_term_is_covered():
    backlog = filled(1, 5, term=2)
    assert all(backlog.covers(seq, 2) for seq in range(1, 6))


def test_log_ending_with_another_term_at_that_seq_is_not_covered():
    backlog = filled(1, 5, term=2)
    assert not backlog.covers(3, 1)


def test_log_ending_beyond_the_newest_entry_is_not_covered():
    backlog = filled(1, 5)
    assert not backlog.covers(6, 1)


# -- bounds -------------------------------------------------------------------------------------------

def test_backlog_keeps_at_most_max_entries():
    backlog = filled(1, 10, max_entries=3)
    assert len(backlog) == 3
    assert backlog.after(0, 100) == [payload(8), payload(9), payload(10)]


def test_oldest_entry_dropped_by_count_becomes_the_base():
    backlog = filled(1, 10, term=4, max_entries=3)
    assert (backlog.base_seq, backlog.base_term) == (7, 4)
    assert backlog.covers(7, 4)          # a log ending at 7 can still be extended with 8..10
    assert backlog.after(7, 100) == [payload(8), payload(9), payload(10)]


def test_entry_that_fell_out_of_the_backlog_is_no_longer_covered():
    backlog = filled(1, 10, max_entries=3)
    assert not backlog.covers(6, 1)
    assert not backlog.covers(1, 1)
    assert backlog.term_at(6) is None


def test_backlog_keeps_at_most_max_bytes_of_entries():
    backlog = filled(1, 10, max_bytes=10, size=4)   # two 4-byte entries fit, three do not
    assert len(backlog) == 2
    assert backlog.after(8, 100) == [payload(9), payload(10)]
    assert not backlog.covers(7, 1)
    assert backlog.covers(8, 1)


def test_single_entry_larger_than_max_bytes_is_still_kept():
    backlog = Backlog(100, 10)
    backlog.append(1, 1, b"x" * 50)
    assert len(backlog) == 1
    assert backlog.after(0, 10) == [b"x" * 50]


def test_large_entry_pushes_out_the_older_ones():
    backlog = filled(1, 3, max_bytes=20, size=4)
    backlog.append(4, 1, b"y" * 18)
    assert backlog.after(3, 10) == [b"y" * 18]
    assert len(backlog) == 1
    assert not backlog.covers(2, 1)


def test_dropped_entries_give_their_bytes_back():
    backlog = filled(1, 100, max_bytes=40, size=4)   # steady state: 10 entries of 4 bytes
    assert len(backlog) == 10
    backlog.append(101, 1, payload(101))
    assert len(backlog) == 10
    assert backlog.last == (101, 1)
