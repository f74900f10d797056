"""Core messages to protobuf and back: the one translation between geomys.cluster.core and gRPC.

Each core message dataclass has a protobuf message of the same name and
field names (protos/cluster.proto), so the conversion is generic; only
nodes and entries need a hand (entries travel as one MessagePack array per
message). A malformed message raises WireError, never anything the core
would act on.
"""

import dataclasses

import msgpack

from . import core
from .log import Entry
from .pb import cluster_pb2 as pb
from .rules import NodeAddress


class WireError(Exception):
    """A message from another node could not be read."""


# The oneof field of pb.Message that carries each core message type.
_FIELD = {cls: pb.Message.DESCRIPTOR.fields_by_camelcase_name[cls.__name__[0].lower() + cls.__name__[1:]].name
          for cls in (core.Append, core.AppendReply, core.Commit, core.Poll, core.PollReply, core.CanYouLead,
                      core.CanYouLeadReply, core.NewLeader, core.NewLeaderReply, core.Fetch, core.FetchReply,
                      core.Join, core.JoinReply, core.Leave, core.LeaveReply, core.ReadIndex, core.ReadIndexReply,
                      core.Rejected)}
_CLASS = {name: cls for cls, name in _FIELD.items()}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _FIELD}
_NODE_FIELDS = {"nominee_node", "leader", "node"}


def node_to_pb(node: NodeAddress) -> pb.Node:
    """A node's addresses as protobuf."""
    return pb.Node(node_id=node.node_id, client_address=node.client_address, grpc_address=node.grpc_address)


def node_from_pb(node: pb.Node) -> NodeAddress:
    """A node's addresses from protobuf."""
    return NodeAddress(node.node_id, node.client_address, node.grpc_address)


def pack_entries(entries) -> bytes:
    """Encode log entries for an Append or a FetchReply (see protos/cluster.proto, Entries)."""
    return msgpack.packb([
        [e.seq, e.term, e.record,
         None if e.members is None else [[n.node_id, n.client_address, n.grpc_address] for n in e.members]]
        for e in entries], use_bin_type=True)


def unpack_entries(data: bytes) -> tuple[Entry, ...]:
    """Decode the entries of an Append or a FetchReply; raise WireError if they are malformed."""
    if not data:
        return ()
    try:
        items = msgpack.unpackb(data, raw=False, use_list=False)
        return tuple(Entry(seq, term, record) if members is None
                     else Entry(seq, term, record, tuple(NodeAddress(*node) for node in members))
                     for seq, term, record, members in items)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:
        raise WireError("malformed entries: %s" % exc) from None


def to_pb(message: core.Message) -> pb.Message:
    """Wrap a core message for the wire."""
    cls = type(message)
    fields = {}
    for name in _FIELDS[cls]:
        value = getattr(message, name)
        if name == "entries":
            value = pack_entries(value)
        elif name in _NODE_FIELDS:
            if value is None:
                continue
            value = node_to_pb(value)
        fields[name] = value
    return pb.Message(**{_FIELD[cls]: getattr(pb, cls.__name__)(**fields)})


def from_pb(envelope: pb.Message) -> core.Message:
    """Unwrap a message from the wire; raise WireError if it carries none."""
    name = envelope.WhichOneof("body")
    if name is None:
        raise WireError("an empty message")
    cls = _CLASS[name]
    body = getattr(envelope, name)
    values = []
    for field in _FIELDS[cls]:
        value = getattr(body, field)
        if field == "entries":
            value = unpack_entries(value)
        elif field in _NODE_FIELDS:
            value = node_from_pb(value) if body.HasField(field) else None
        values.append(value)
    return cls(*values)
