"""The replicated log a node keeps in memory (geomys.cluster.log.Log): what it keeps and can serve.

Pure bookkeeping: no sockets, no sleeps.
"""

import pytest

from geomys.cluster.log import Entry, Log


def entry(seq: int, term: int = 1, size: int = 4) -> Entry:
    """A recognisable entry whose record is exactly `size` bytes."""
    return Entry(seq, term, (b"e%d-" % seq * size)[:size])


def filled(first: int, last: int, term: int = 1, max_entries: int = 1000, max_bytes: int = 1 << 20,
           base=(0, 0), size: int = 4) -> Log:
    log = Log(max_entries, max_bytes)
    log.reset(*base)
    for seq in range(first, last + 1):
        log.append(entry(seq, term, size))
    return log


def seqs(entries) -> list[int]:
    return [e.seq for e in entries]


# -- empty and reset ------------------------------------------------------------------------

def test_new_log_is_empty_and_starts_at_zero():
    log = Log(10, 100)
    assert len(log) == 0
    assert (log.last_seq, log.last_term) == (0, 0)
    assert log.after(0, 10) == []


def test_reset_forgets_every_entry_and_starts_after_the_snapshot():
    log = filled(1, 5)
    log.reset(40, 6)
    assert len(log) == 0
    assert (log.last_seq, log.last_term) == (40, 6)
    assert log.term_at(40) == 6 and log.term_at(3) is None
    assert log.covers(40) and not log.covers(3)


def test_entry_that_does_not_follow_the_newest_is_refused():
    log = filled(1, 3)
    with pytest.raises(ValueError):
        log.append(entry(5))


# -- after ----------------------------------------------------------------------------------------

def test_after_returns_the_entries_that_follow_a_seq_in_order():
    assert seqs(filled(1, 5).after(2, 10)) == [3, 4, 5]


def test_after_the_base_returns_everything():
    assert seqs(filled(1, 3).after(0, 10)) == [1, 2, 3]


def test_after_the_newest_entry_returns_nothing():
    log = filled(1, 5)
    assert log.after(5, 10) == [] and log.after(9, 10) == []


def test_after_returns_at_most_limit_entries():
    assert seqs(filled(1, 10).after(0, 3)) == [1, 2, 3]


def test_after_stops_before_max_bytes_but_returns_at_least_one_entry():
    assert seqs(filled(1, 10, size=10).after(0, 100, max_bytes=25)) == [1, 2]
    assert seqs(filled(1, 3, size=100).after(0, 100, max_bytes=10)) == [1]


# -- term_at / covers / entry -----------------------------------------------------------------------

def test_term_at_knows_each_kept_entry_and_the_base():
    log = Log(10, 1000)
    log.reset(10, 1)
    for seq, term in ((11, 1), (12, 2), (13, 2)):
        log.append(entry(seq, term))
    assert [log.term_at(s) for s in (10, 11, 12, 13)] == [1, 1, 2, 2]
    assert log.term_at(9) is None and log.term_at(14) is None
    assert log.entry(12).term == 2 and log.entry(14) is None


def test_covers_every_seq_from_the_base_to_the_newest():
    log = filled(5, 9, base=(4, 1))
    assert all(log.covers(s) for s in range(4, 10))
    assert not log.covers(3) and not log.covers(10)


# -- truncate_after ------------------------------------------------------------------------------------

def test_truncate_after_drops_the_newer_entries_and_new_ones_follow():
    log = filled(1, 10, term=1)
    log.truncate_after(6)
    assert log.last_seq == 6
    log.append(entry(7, term=2))
    assert (log.last_seq, log.last_term) == (7, 2)
    assert seqs(log.after(5, 10)) == [6, 7]


def test_truncate_after_the_newest_entry_changes_nothing():
    log = filled(1, 4)
    log.truncate_after(4)
    assert log.last_seq == 4 and len(log) == 4


# -- trim: the bounded backlog of committed entries ---------------------------------------------------

def test_trim_keeps_at_most_max_entries_and_the_last_dropped_becomes_the_base():
    log = filled(1, 10, term=4, max_entries=3)
    log.trim(upto=10)
    assert len(log) == 3 and (log.base_seq, log.base_term) == (7, 4)
    assert seqs(log.after(7, 100)) == [8, 9, 10]
    assert not log.covers(6) and log.term_at(6) is None


def test_trim_keeps_at_most_max_bytes_of_entries():
    log = filled(1, 10, max_bytes=10, size=4)   # two 4-byte entries fit, three do not
    log.trim(upto=10)
    assert seqs(log.after(8, 100)) == [9, 10] and not log.covers(7)


def test_trim_never_drops_an_entry_after_the_commit_point():
    log = filled(1, 10, max_entries=3)
    log.trim(upto=4)
    assert log.base_seq == 4
    assert seqs(log.after(4, 100)) == [5, 6, 7, 8, 9, 10]


def test_a_single_entry_larger_than_max_bytes_is_kept():
    log = Log(100, 10)
    log.append(Entry(1, 1, b"x" * 50))
    log.trim(upto=1)
    assert len(log) == 1


def test_dropped_entries_give_their_bytes_back():
    log = filled(1, 100, max_bytes=40, size=4)
    log.trim(upto=100)
    assert len(log) == 10
    log.append(entry(101))
    log.trim(upto=101)
    assert len(log) == 10 and log.last_seq == 101
