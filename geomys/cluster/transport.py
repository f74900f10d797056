"""Calls to other nodes over gRPC: one ordered message stream per peer, and a few plain calls.

`GrpcTransport` carries the consensus core's messages: each peer gets one
long-lived `Exchange` stream fed from a queue, so messages arrive in order
and a new batch never waits for the previous answer (pipelining); the peer's
answers come back on the same stream and go to `deliver`. `call` and
`sync` are blocking calls with a deadline. `grpc.RpcError` never leaves this
module: a failed call raises PeerUnavailable, a broken stream is reported by
`take_unreachable`. Called from client-handler, ticker and sync threads; the
stream threads are its own.
"""

import hmac
import logging
import queue
import threading
import time
from typing import Callable, Iterator, Optional, Protocol

import grpc

from . import wire
from .pb import cluster_pb2 as pb
from .pb import cluster_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SECRET_HEADER = "geomys-cluster-secret"
STREAM_SECONDS = 300.0     # an Exchange stream is reopened this often (every call has a deadline)
QUEUE_LIMIT = 10000        # messages queued for one peer; more are dropped (the protocol resends)


class PeerUnavailable(Exception):
    """A call to another node failed (unreachable, deadline passed, refused)."""


def channel_options(max_message_bytes: int) -> list:
    """gRPC options shared by channels and the server: big messages, quick reconnects."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.min_reconnect_backoff_ms", 100),
        # A peer cut off without a reset (a dropped route) breaks its stream within seconds.
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 2000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
        ("grpc.http2.max_ping_strikes", 0),
    ]


class Transport(Protocol):
    """How the driver reaches other nodes: GrpcTransport here, an in-memory network in the tests."""

    def send(self, to: int, address: str, message) -> None:
        """Queue a core message for node `to`; best effort, never blocks."""

    def take_unreachable(self) -> set[int]:
        """The peers a message could not be delivered to since the last call."""

    def ask(self, address: str, message, timeout: Optional[float] = None):
        """Send a Join or a Leave and return the core message that answers it; raise PeerUnavailable."""

    def call(self, address: str, method: str, request, timeout: Optional[float] = None):
        """A plain call (Forward) to the node at `address`; raise PeerUnavailable."""

    def sync(self, address: str, request: pb.SyncRequest, timeout: float) -> Iterator[pb.SyncChunk]:
        """The chunks of a snapshot from the node at `address`; raise PeerUnavailable."""

    def close(self) -> None:
        """Stop sending."""


class GrpcTransport:
    """Stubs to other nodes keyed by gRPC address, and one message stream per peer id."""

    def __init__(self, rpc_timeout: float, max_message_bytes: int, secret: Optional[str],
                 deliver: Callable[[list], object], credentials: Optional[grpc.ChannelCredentials] = None) -> None:
        self.rpc_timeout = rpc_timeout
        self.deliver = deliver
        self._credentials = credentials  # TLS (geomys.tls) when set, else plaintext
        self._options = channel_options(max_message_bytes)
        self._metadata = ((SECRET_HEADER, secret),) if secret else ()
        self._stubs: dict[str, pb_grpc.ClusterStub] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._streams: dict[int, _Stream] = {}
        self._unreachable: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _stub(self, address: str) -> pb_grpc.ClusterStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = (grpc.secure_channel(address, self._credentials, options=self._options)
                           if self._credentials else grpc.insecure_channel(address, options=self._options))
                self._channels[address] = channel
                stub = self._stubs[address] = pb_grpc.ClusterStub(channel)
            return stub

    def send(self, to: int, address: str, message) -> None:
        """Queue a core message for node `to` at `address`; never blocks."""
        with self._lock:
            if self._closed:
                return
            stream = self._streams.get(to)
            if stream is None or stream.address != address:
                if stream is not None:
                    stream.close()
                stream = self._streams[to] = _Stream(self, to, address)
        stream.put(message)

    def take_unreachable(self) -> set[int]:
        """The peers whose stream broke since the last call (their queued messages were dropped)."""
        with self._lock:
            peers, self._unreachable = self._unreachable, set()
        return peers

    def _report(self, peer: int) -> None:
        with self._lock:
            self._unreachable.add(peer)

    def call(self, address: str, method: str, request, timeout: Optional[float] = None):
        """Call `method` on the node at `address`; raise PeerUnavailable on any failure."""
        try:
            return getattr(self._stub(address), method)(
                request, timeout=timeout or self.rpc_timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise PeerUnavailable("%s on %s failed: %s" % (method, address, _describe(exc))) from None

    def ask(self, address: str, message, timeout: Optional[float] = None):
        """Send one core message with `Ask` and return the core message that answers it."""
        reply = self.call(address, "Ask", wire.to_pb(message), timeout)
        try:
            return wire.from_pb(reply)
        except wire.WireError as exc:
            raise PeerUnavailable("unreadable answer from %s: %s" % (address, exc)) from None

    def sync(self, address: str, request: pb.SyncRequest, timeout: float) -> Iterator[pb.SyncChunk]:
        """Stream the chunks of a Sync from `address`; raise PeerUnavailable if it breaks."""
        try:
            for chunk in self._stub(address).Sync(request, timeout=timeout, metadata=self._metadata):
                yield chunk
        except grpc.RpcError as exc:
            raise PeerUnavailable("Sync from %s failed: %s" % (address, _describe(exc))) from None

    def close(self) -> None:
        """Stop every stream and close every channel."""
        with self._lock:
            self._closed = True
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.close()
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()


class _Stream:
    """One peer's outgoing messages: a queue, and the thread that keeps an Exchange stream open and
    hands the peer's answers on."""

    _CLOSE = object()   # queued to end the stream

    def __init__(self, transport: GrpcTransport, peer: int, address: str) -> None:
        self.transport = transport
        self.peer = peer
        self.address = address
        self._queue: queue.SimpleQueue = queue.SimpleQueue()   # put() is one C call: the proposer's cost
        self._up = True           # optimistic until a call fails
        self._closed = False
        self._call = 0            # which Exchange call is current
        threading.Thread(target=self._run, name="stream-%d" % peer, daemon=True).start()

    def put(self, message) -> None:
        if self._up and self._queue.qsize() < QUEUE_LIMIT:
            self._queue.put(message)
        # else dropped: a broken stream is reported by the thread, and the protocol resends

    def close(self) -> None:
        self._closed = True
        self._queue.put(self._CLOSE)

    def _batches(self, call: int) -> Iterator[pb.Batch]:
        """Everything queued so far, as one batch per wake-up; ends when the stream is closed.

        gRPC reads this from a thread of its own, which may outlive a broken
        call: it then ends within a second instead of taking the next call's messages.
        """
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            try:
                messages = [get(timeout=1.0)]
            except queue.Empty:
                if call != self._call:
                    return
                continue
            try:
                while True:
                    messages.append(get_nowait())
            except queue.Empty:
                pass
            if messages[-1] is self._CLOSE or call != self._call:
                return
            yield pb.Batch(messages=[wire.to_pb(m) for m in messages if m is not self._CLOSE])

    def _drop_queued(self) -> None:
        try:
            while True:
                if self._queue.get_nowait() is self._CLOSE:
                    self._closed = True
        except queue.Empty:
            pass

    def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            self._up = True
            self._call += 1
            try:
                answers = self.transport._stub(self.address).Exchange(
                    self._batches(self._call), timeout=STREAM_SECONDS, metadata=self.transport._metadata)
                for batch in answers:
                    self.transport.deliver([wire.from_pb(m) for m in batch.messages])
                backoff = 0.05
            except wire.WireError as exc:
                logger.warning("unreadable answer from node %d: %s", self.peer, exc)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED and not self._closed:
                    logger.debug("stream to node %d broke: %s", self.peer, _describe(exc))
                    self._up = False
                    self._drop_queued()
                    self.transport._report(self.peer)
                    time.sleep(backoff)   # before dialling again; the stream thread has nothing else to do
                    backoff = min(backoff * 2, 1.0)


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else ""
    return "%s %s" % (code.name if code else "error", details or "")


class SecretInterceptor(grpc.ServerInterceptor):
    """Refuses every call that does not carry the cluster secret (compared in constant time)."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster secret")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_sync = grpc.unary_stream_rpc_method_handler(deny)
        self._deny_exchange = grpc.stream_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get(SECRET_HEADER)
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._secret.encode()):
            return continuation(handler_call_details)
        method = handler_call_details.method
        if method.endswith("/Sync"):
            return self._deny_sync
        return self._deny_exchange if method.endswith("/Exchange") else self._deny
