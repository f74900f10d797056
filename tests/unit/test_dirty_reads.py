"""The rule that tells a dirty read from the final state (tests/faults/reads.dirty_reads)."""

from tests.faults.reads import Read, dirty_reads


def read(key, value, node_id=1):
    return Read(node_id, key, value, 0.0, 0.0)


def test_a_counter_read_above_its_final_value_is_dirty_and_at_or_below_it_is_not():
    reads = [read("c", "5"), read("c", "7"), read("c", "8"), read("never", "1")]
    assert dirty_reads(reads, {"c": "7", "never": None}, {"c", "never"}) == [reads[2], reads[3]]


def test_a_key_read_with_a_value_it_does_not_hold_at_the_end_is_dirty():
    reads = [read("kept", "v"), read("gone", "v"), read("other", "old")]
    assert dirty_reads(reads, {"kept": "v", "gone": None, "other": "new"}, set()) == [reads[1], reads[2]]


def test_a_key_read_as_absent_is_never_dirty():
    assert dirty_reads([read("k", None), read("c", None)], {"k": "v", "c": "3"}, {"c"}) == []
