"""Calls to other nodes: one reused gRPC channel per peer, a deadline on every call.

`grpc.RpcError` never leaves this module: a failed call raises PeerUnavailable.
Called from the cluster's ticker, sender and client-handler threads.
"""

import hmac
import threading
from typing import Iterator, Optional

import grpc

from .pb import cluster_pb2 as pb
from .pb import cluster_pb2_grpc as pb_grpc

SECRET_HEADER = "geomys-cluster-secret"


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
    ]


class Peers:
    """Blocking stubs to other nodes, keyed by gRPC address."""

    def __init__(self, rpc_timeout: float, max_message_bytes: int, secret: Optional[str],
                 credentials: Optional[grpc.ChannelCredentials] = None) -> None:
        self.rpc_timeout = rpc_timeout
        self._credentials = credentials  # TLS (geomys.tls) when set, else plaintext
        self._options = channel_options(max_message_bytes)
        self._metadata = ((SECRET_HEADER, secret),) if secret else ()
        self._stubs: dict[str, pb_grpc.ClusterStub] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def _stub(self, address: str) -> pb_grpc.ClusterStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = (grpc.secure_channel(address, self._credentials, options=self._options)
                           if self._credentials else grpc.insecure_channel(address, options=self._options))
                self._channels[address] = channel
                stub = self._stubs[address] = pb_grpc.ClusterStub(channel)
            return stub

    def call(self, address: str, method: str, request, timeout: Optional[float] = None):
        """Call `method` on the node at `address`; raise PeerUnavailable on any failure."""
        try:
            return getattr(self._stub(address), method)(
                request, timeout=timeout or self.rpc_timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise PeerUnavailable("%s on %s failed: %s" % (method, address, _describe(exc))) from None

    def sync(self, address: str, request: pb.SyncRequest, timeout: float) -> Iterator[pb.SyncChunk]:
        """Stream the chunks of a Sync from `address`; raise PeerUnavailable if it breaks."""
        try:
            for chunk in self._stub(address).Sync(request, timeout=timeout, metadata=self._metadata):
                yield chunk
        except grpc.RpcError as exc:
            raise PeerUnavailable("Sync from %s failed: %s" % (address, _describe(exc))) from None

    def close(self) -> None:
        """Close every channel."""
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()


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
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get(SECRET_HEADER)
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._secret.encode()):
            return continuation(handler_call_details)
        return self._deny_stream if handler_call_details.method.endswith("/Sync") else self._deny
