"""The cluster's pure rules (geomys.cluster.rules): membership, liveness, election, commit, health.

Every function takes the time as an argument, so these tests pass explicit
`now` values: no sockets, no sleeps, no threads.
"""

import msgpack
import pytest

from geomys.cluster import rules
from geomys.cluster.rules import NodeAddress, VoteAnswer

FT = 1.0      # failure_timeout used throughout
NOW = 1000.0


def addr(node_id: int, port: int = 0) -> NodeAddress:
    port = port or 6000 + node_id
    return NodeAddress(node_id, "127.0.0.1:%d" % port, "127.0.0.1:%d" % (port + 1000))


def members_of(*ids: int) -> dict[int, NodeAddress]:
    return {n: addr(n) for n in ids}


def answer(node_id: int, nominee: int, term: int = 1, last_seq: int = 0, last_term: int = 1) -> VoteAnswer:
    return VoteAnswer(node_id, nominee, term, last_seq, last_term)


# -- majority ------------------------------------------------------------------------

@pytest.mark.parametrize("size, needed", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_majority_is_more_than_half_of_the_members(size, needed):
    assert rules.majority(size) == needed


# -- membership hash and MEMBERS records ---------------------------------------------------

def test_membership_hash_ignores_insertion_order():
    forward = {1: addr(1), 2: addr(2), 3: addr(3)}
    backward = {3: addr(3), 2: addr(2), 1: addr(1)}
    assert rules.membership_hash(forward) == rules.membership_hash(backward)


def test_membership_hash_changes_when_a_member_is_added_or_removed():
    three = members_of(1, 2, 3)
    assert rules.membership_hash(three) != rules.membership_hash(members_of(1, 2))
    assert rules.membership_hash(three) != rules.membership_hash(members_of(1, 2, 3, 4))


def test_membership_hash_changes_when_an_address_changes():
    moved = members_of(1, 2)
    moved[2] = addr(2, port=7777)
    assert rules.membership_hash(members_of(1, 2)) != rules.membership_hash(moved)


def test_membership_hash_is_a_short_hex_string():
    digest = rules.membership_hash(members_of(1, 2, 3))
    assert len(digest) == 16 and int(digest, 16) >= 0


def test_members_record_round_trips_through_members_from_record():
    members = members_of(3, 1, 2)
    record = rules.members_record(members)
    assert record[0] == "MEMBERS"
    assert rules.members_from_record(record) == members


def test_members_record_survives_a_msgpack_round_trip():
    # Records travel and are stored as MessagePack, which turns tuples into lists.
    members = members_of(1, 5, 9)
    wire = msgpack.unpackb(msgpack.packb(rules.members_record(members)), raw=False)
    assert rules.members_from_record(wire) == members


def test_members_record_lists_nodes_in_id_order():
    record = rules.members_record({3: addr(3), 1: addr(1), 2: addr(2)})
    assert [m[0] for m in record[1]] == [1, 2, 3]


def test_empty_membership_round_trips():
    assert rules.members_from_record(rules.members_record({})) == {}


# -- liveness ------------------------------------------------------------------------------

def test_node_heard_within_failure_timeout_is_live():
    live = rules.live_ids(1, {2: NOW - 0.5}, NOW, FT, among=[1, 2])
    assert live == {1, 2}


def test_node_silent_for_failure_timeout_is_not_live():
    live = rules.live_ids(1, {2: NOW - FT, 3: NOW - 5}, NOW, FT, among=[1, 2, 3])
    assert live == {1}


def test_node_never_heard_from_is_not_live():
    assert rules.live_ids(1, {}, NOW, FT, among=[1, 2, 3]) == {1}


def test_self_always_counts_as_live_even_if_not_listed():
    assert rules.live_ids(7, {}, NOW, FT, among=[]) == {7}


def test_only_nodes_among_the_given_ids_are_reported_live():
    live = rules.live_ids(1, {2: NOW, 9: NOW}, NOW, FT, among=[1, 2])
    assert live == {1, 2}


# -- nominee -----------------------------------------------------------------------------

def test_node_with_a_live_leader_names_the_leader():
    assert rules.nominee(self_id=1, leader_id=3, leader_alive=True, live={1, 2, 3}) == 3


def test_smallest_live_id_is_nominated_when_the_leader_is_dead():
    assert rules.nominee(self_id=4, leader_id=1, leader_alive=False, live={2, 3, 4}) == 2


def test_smallest_live_id_is_nominated_when_no_leader_is_known():
    assert rules.nominee(self_id=5, leader_id=None, leader_alive=False, live={3, 5}) == 3


def test_node_counts_itself_when_nominating():
    assert rules.nominee(self_id=1, leader_id=None, leader_alive=False, live={2, 3}) == 1


def test_a_leader_id_without_a_live_leader_is_not_named():
    assert rules.nominee(self_id=2, leader_id=1, leader_alive=False, live={2, 3}) == 2


# -- tally -------------------------------------------------------------------------------

def test_unanimous_majority_chooses_the_named_node():
    assert rules.tally([1, 2, 3], [answer(2, 2), answer(3, 2)]) == 2


def test_unanimous_answers_from_every_member_choose_the_named_node():
    assert rules.tally([1, 2, 3, 4, 5], [answer(n, 2) for n in (1, 2, 3, 4, 5)]) == 2


def test_split_answers_choose_nobody():
    assert rules.tally([1, 2, 3], [answer(1, 1), answer(2, 2), answer(3, 2)]) is None


def test_answers_from_a_minority_choose_nobody():
    assert rules.tally([1, 2, 3, 4, 5], [answer(4, 4), answer(5, 4)]) is None


def test_single_answer_of_a_three_node_cluster_chooses_nobody():
    assert rules.tally([1, 2, 3], [answer(3, 3)]) is None


def test_nominee_outside_the_membership_is_not_chosen():
    assert rules.tally([1, 2, 3], [answer(1, 9), answer(2, 9), answer(3, 9)]) is None


def test_answers_from_non_members_do_not_count_toward_the_majority():
    assert rules.tally([1, 2, 3], [answer(2, 2), answer(8, 2), answer(9, 2)]) is None


def test_answers_from_non_members_do_not_split_a_unanimous_majority():
    assert rules.tally([1, 2, 3], [answer(2, 2), answer(3, 2), answer(9, 9)]) == 2


def test_no_answers_choose_nobody():
    assert rules.tally([1, 2, 3], []) is None


def test_sole_member_chooses_itself():
    assert rules.tally([4], [answer(4, 4)]) == 4


# -- most_up_to_date ------------------------------------------------------------------------

def test_higher_last_term_beats_higher_seq():
    older_but_longer = answer(2, 2, last_seq=100, last_term=1)
    newer = answer(3, 2, last_seq=10, last_term=2)
    assert rules.most_up_to_date([older_but_longer, newer]) == newer


def test_higher_seq_wins_within_the_same_term():
    short, long = answer(2, 2, last_seq=5, last_term=3), answer(3, 2, last_seq=9, last_term=3)
    assert rules.most_up_to_date([long, short]) == long


def test_single_answer_is_the_most_up_to_date():
    only = answer(1, 1, last_seq=0, last_term=0)
    assert rules.most_up_to_date([only]) == only


# -- commit_seq ---------------------------------------------------------------------------

def test_commit_of_three_members_is_the_seq_one_follower_has_reached():
    assert rules.commit_seq(1, 10, {2: 7, 3: 3}, [1, 2, 3]) == 7


def test_commit_of_three_members_waits_while_both_followers_lag():
    assert rules.commit_seq(1, 10, {2: 0, 3: 0}, [1, 2, 3]) == 0


def test_commit_of_three_members_with_one_dead_follower_follows_the_live_one():
    assert rules.commit_seq(1, 10, {2: 10}, [1, 2, 3]) == 10


def test_commit_of_five_members_is_the_third_highest_seq():
    assert rules.commit_seq(1, 10, {2: 9, 3: 5, 4: 2, 5: 0}, [1, 2, 3, 4, 5]) == 5


def test_commit_of_five_members_with_two_lagging_followers_ignores_them():
    assert rules.commit_seq(1, 10, {2: 10, 3: 10, 4: 1, 5: 1}, [1, 2, 3, 4, 5]) == 10


def test_commit_of_five_members_needs_two_followers():
    assert rules.commit_seq(1, 10, {2: 8}, [1, 2, 3, 4, 5]) == 0


def test_commit_of_a_single_member_is_the_leaders_seq():
    assert rules.commit_seq(1, 42, {}, [1]) == 42


def test_commit_ignores_acks_of_non_members():
    # A learner's progress does not count toward the majority.
    assert rules.commit_seq(1, 10, {2: 0, 3: 0, 9: 10}, [1, 2, 3]) == 0


def test_lagging_leader_alone_never_commits_past_what_a_majority_has():
    assert rules.commit_seq(1, 4, {2: 0, 3: 0}, [1, 2, 3]) == 0


# -- reaches_majority -------------------------------------------------------------------------

def test_leader_hearing_one_of_two_followers_reaches_a_majority():
    assert rules.reaches_majority(1, [1, 2, 3], {2: NOW - 0.1}, NOW, FT)


def test_leader_hearing_no_follower_does_not_reach_a_majority():
    assert not rules.reaches_majority(1, [1, 2, 3], {2: NOW - 2, 3: NOW - 2}, NOW, FT)


def test_sole_member_always_reaches_a_majority():
    assert rules.reaches_majority(1, [1], {}, NOW, FT)


def test_two_of_five_is_not_a_majority():
    assert not rules.reaches_majority(1, [1, 2, 3, 4, 5], {2: NOW}, NOW, FT)


def test_three_of_five_is_a_majority():
    assert rules.reaches_majority(1, [1, 2, 3, 4, 5], {2: NOW, 3: NOW}, NOW, FT)


def test_hearing_non_members_does_not_make_a_majority():
    assert not rules.reaches_majority(1, [1, 2, 3], {8: NOW, 9: NOW}, NOW, FT)


# -- silent_members -------------------------------------------------------------------------------

def test_silent_member_is_removed_while_the_leader_reaches_a_majority():
    assert rules.silent_members(1, [1, 2, 3], {2: NOW, 3: NOW - 5}, NOW, FT, FT) == [3]


def test_leader_isolated_from_majority_removes_nobody():
    assert rules.silent_members(1, [1, 2, 3], {2: NOW - 5, 3: NOW - 5}, NOW, FT, FT) == []


def test_leader_of_five_removes_two_silent_members_while_three_remain():
    assert rules.silent_members(1, [1, 2, 3, 4, 5], {2: NOW, 3: NOW, 4: NOW - 9, 5: NOW - 9},
                                NOW, FT, FT) == [4, 5]


def test_leader_of_five_hearing_only_one_follower_removes_nobody():
    assert rules.silent_members(1, [1, 2, 3, 4, 5], {2: NOW}, NOW, FT, FT) == []


def test_no_member_is_removed_when_everyone_is_heard():
    assert rules.silent_members(1, [1, 2, 3], {2: NOW, 3: NOW}, NOW, FT, FT) == []


def test_leader_that_heard_a_majority_only_before_the_last_heartbeat_interval_removes_nobody():
    # Heard within failure_timeout but not lately: it may be cut off itself, and must not shrink the cluster.
    assert rules.silent_members(1, [1, 2, 3], {2: NOW - 0.5, 3: NOW - 5}, NOW, FT, 0.2) == []


def test_leader_that_heard_a_majority_within_the_last_heartbeat_interval_removes_a_silent_member():
    assert rules.silent_members(1, [1, 2, 3], {2: NOW - 0.1, 3: NOW - 5}, NOW, FT, 0.2) == [3]


def test_leader_never_removes_itself():
    assert 1 not in rules.silent_members(1, [1, 2, 3], {2: NOW, 3: NOW - 5}, NOW, FT, FT)


# -- learner_caught_up --------------------------------------------------------------------------

def test_learner_within_the_slack_is_caught_up():
    assert rules.learner_caught_up(learner_seq=900, leader_seq=1000, slack=100)


def test_learner_beyond_the_slack_is_not_caught_up():
    assert not rules.learner_caught_up(learner_seq=899, leader_seq=1000, slack=100)


def test_learner_level_with_the_leader_is_caught_up():
    assert rules.learner_caught_up(learner_seq=1000, leader_seq=1000, slack=0)


# -- an election played out with the rules alone ---------------------------------------------------

def vote(node_id: int, members, last_seen: dict, leader_alive: bool, candidate: int) -> VoteAnswer:
    """What node `node_id` answers a candidate, by the rules alone."""
    live = rules.live_ids(node_id, last_seen, NOW, FT, members) | {candidate}
    return answer(node_id, rules.nominee(node_id, 1, leader_alive, live))


def test_three_survivors_of_a_dead_leader_agree_on_the_smallest_id():
    members = members_of(1, 2, 3, 4)
    answers = [vote(n, members, {m: NOW - 0.1 for m in (2, 3, 4) if m != n} | {1: NOW - 5}, False, 4)
               for n in (2, 3, 4)]
    assert rules.tally(members, answers) == 2


def test_node_that_lost_only_its_own_link_cannot_move_leadership():
    # Node 3 stopped hearing leader 1, but nodes 2 and 4 still do: they name 1, so no unanimity.
    members = members_of(1, 2, 3, 4)
    everyone = {1: NOW, 2: NOW, 3: NOW, 4: NOW}
    answers = [vote(3, members, {1: NOW - 5, 2: NOW, 4: NOW}, False, 3)] + \
        [vote(n, members, everyone, True, 3) for n in (2, 4)]
    assert [a.nominee for a in answers] == [2, 1, 1]
    assert rules.tally(members, answers) is None


def test_candidate_defers_to_a_unanimous_answer_of_the_others():
    own = rules.VoteAnswer(1, 1, 1, 600, 1)
    others = [rules.VoteAnswer(2, 2, 3, 900, 3), rules.VoteAnswer(3, 2, 3, 900, 3)]
    assert rules.defer_to_others(own, others).nominee == 2
    assert rules.tally([1, 2, 3], [rules.defer_to_others(own, others)] + others) == 2


def test_candidate_keeps_its_own_answer_when_the_others_disagree_or_are_silent():
    own = rules.VoteAnswer(1, 1, 1, 600, 1)
    split = [rules.VoteAnswer(2, 2, 3, 900, 3), rules.VoteAnswer(3, 3, 3, 900, 3)]
    assert rules.defer_to_others(own, split) == own
    assert rules.defer_to_others(own, []) == own


def test_a_read_round_is_confirmed_by_a_majority_counting_the_leader_itself():
    members = {1: None, 2: None, 3: None}
    assert not rules.round_confirmed(1, members, {2: 4, 3: 4}, 5)
    assert rules.round_confirmed(1, members, {2: 5, 3: 0}, 5)
    assert rules.round_confirmed(1, members, {2: 6}, 5)              # a later round acknowledges this one too
    five = {n: None for n in range(1, 6)}
    assert not rules.round_confirmed(1, five, {2: 5, 9: 5}, 5)       # a learner's answer does not count
    assert rules.round_confirmed(1, five, {2: 5, 3: 7}, 5)
    assert not rules.round_confirmed(1, {2: None, 3: None}, {2: 5}, 5)   # a leader outside the membership
