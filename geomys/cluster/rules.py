"""The cluster's rules as plain functions: no state, no I/O.

Membership, liveness, the election (the seed's "smallest live id" made safe
by majorities and terms), the commit rule and the leader's health checks.
Every function takes the time as an argument; nothing here sleeps, threads or
touches the network. The consensus core (geomys.cluster.core) calls them.
"""

import hashlib
from dataclasses import dataclass, replace
from typing import Iterable, Optional

STANDALONE, LEADER, FOLLOWER, CANDIDATE, LEARNER = "standalone", "leader", "follower", "candidate", "learner"


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where a node serves clients and where other nodes reach it."""

    node_id: int
    client_address: str
    grpc_address: str


@dataclass(frozen=True, slots=True)
class VoteAnswer:
    """One node's answer to "who should lead?"."""

    node_id: int
    nominee: int
    term: int
    last_seq: int
    last_term: int


def majority(size: int) -> int:
    """How many members make a majority of `size`."""
    return size // 2 + 1


def membership_hash(members: dict[int, NodeAddress]) -> str:
    """A short digest of the membership, so two nodes can compare lists cheaply."""
    text = ";".join("%d=%s,%s" % (n, a.client_address, a.grpc_address) for n, a in sorted(members.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def members_record(members: dict[int, NodeAddress]) -> tuple:
    """The MEMBERS effect record that sets the membership to `members`."""
    return ("MEMBERS", [[a.node_id, a.client_address, a.grpc_address] for _, a in sorted(members.items())])


def members_from_record(record) -> dict[int, NodeAddress]:
    """Read the membership out of a MEMBERS record."""
    return {int(m[0]): NodeAddress(int(m[0]), m[1], m[2]) for m in record[1]}


def live_ids(self_id: int, last_seen: dict[int, float], now: float, failure_timeout: float,
             among: Iterable[int]) -> set[int]:
    """The nodes of `among` heard from within failure_timeout; this node always counts as live."""
    live = {n for n in among if now - last_seen.get(n, float("-inf")) < failure_timeout}
    live.add(self_id)
    return live


def nominee(self_id: int, leader_id: Optional[int], leader_alive: bool, live: set[int]) -> int:
    """Whom this node names in answer to a VoteRequest.

    While its leader is alive it names that leader, so a node that merely lost
    its own link cannot move leadership away from a healthy leader; otherwise
    the smallest live id it knows.
    """
    if leader_id is not None and leader_alive:
        return leader_id
    return min(live | {self_id})


def tally(members: Iterable[int], answers: Iterable[VoteAnswer]) -> Optional[int]:
    """The node to ask to lead: named by every answer, from a majority of members; else None."""
    members = set(members)
    answers = [a for a in answers if a.node_id in members]
    if len(answers) < majority(len(members)):
        return None
    names = {a.nominee for a in answers}
    if len(names) != 1:
        return None
    chosen = names.pop()
    return chosen if chosen in members else None


def defer_to_others(own: VoteAnswer, others: Iterable[VoteAnswer]) -> VoteAnswer:
    """A candidate's own answer, yielding to the other nodes when they all name one node.

    A node that was away (paused, cut off) still names the smallest id it
    remembers, often itself, while the others name the leader they elected
    meanwhile; their unanimous answer wins, so the round can conclude (and the
    node then finds that leader). When the others disagree, its own view stands.
    """
    names = {a.nominee for a in others}
    if len(names) == 1:
        return replace(own, nominee=names.pop())
    return own


def most_up_to_date(answers: Iterable[VoteAnswer]) -> VoteAnswer:
    """The answer whose log goes furthest: highest last term, then highest last seq."""
    return max(answers, key=lambda a: (a.last_term, a.last_seq))


def commit_seq(leader_id: int, leader_seq: int, acked: dict[int, int], members: Iterable[int]) -> int:
    """The highest log index applied by a majority of members (the leader counts with its own)."""
    members = list(members)
    seqs = sorted((leader_seq if n == leader_id else acked.get(n, 0) for n in members), reverse=True)
    return seqs[majority(len(members)) - 1]


def reaches_majority(self_id: int, members: Iterable[int], last_seen: dict[int, float], now: float,
                     failure_timeout: float) -> bool:
    """Whether this node has heard from a majority of the members (itself included) recently."""
    members = set(members)
    return len(live_ids(self_id, last_seen, now, failure_timeout, members) & (members | {self_id})) \
        >= majority(len(members))


def silent_members(self_id: int, members: Iterable[int], last_seen: dict[int, float], now: float,
                   failure_timeout: float, recent: float) -> list[int]:
    """Members the leader should remove: silent for failure_timeout.

    Only while it has heard from a majority within `recent` (a heartbeat
    interval): with the same window for both checks, a leader cut off from
    everyone could still count a follower as live and remove another member.
    """
    members = set(members)
    if not reaches_majority(self_id, members, last_seen, now, recent):
        return []
    live = live_ids(self_id, last_seen, now, failure_timeout, members)
    return sorted(members - live)


def learner_caught_up(learner_seq: int, leader_seq: int, slack: int) -> bool:
    """Whether a learner is close enough to the leader's log to become a voting member."""
    return leader_seq - learner_seq <= slack


def round_confirmed(self_id: int, members: dict, acked: dict[int, int], number: int) -> bool:
    """Whether a majority of `members` acknowledged read-index round `number` (this node counts itself)."""
    count = sum(1 for n in members if n == self_id or acked.get(n, 0) >= number)
    return count >= majority(len(members))
