"""The gRPC servicer: thin translation from calls to the ClusterNode driver.

Runs on the grpc.server thread pool. Sizing leaves headroom for heartbeats and
elections beside forwarded blocking pops (which ClusterNode also bounds).
"""

import socket
from concurrent import futures
from typing import Optional

import grpc

from . import core, wire
from .node import ClusterNode
from .pb import cluster_pb2 as pb
from .pb import cluster_pb2_grpc as pb_grpc
from .transport import SecretInterceptor, channel_options

GRPC_WORKERS = 64


class ClusterService(pb_grpc.ClusterServicer):
    """Hands each call to the node; the node holds all the logic."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def Exchange(self, request_iterator, context):
        for batch in request_iterator:
            try:
                messages = [wire.from_pb(envelope) for envelope in batch.messages]
            except wire.WireError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            answers = self.node.receive(messages, answer_inline=True)
            if answers:
                yield pb.Batch(messages=[wire.to_pb(m) for m in answers])

    def Ask(self, request, context):
        try:
            message = wire.from_pb(request)
        except wire.WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if type(message) not in (core.Join, core.Leave):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Ask takes a Join or a Leave")
        return wire.to_pb(self.node.ask(message))

    def Forward(self, request, context):
        return self.node.on_forward(request)

    def Sync(self, request, context):
        return self.node.serve_sync(request)


class PortUnavailable(Exception):
    """The cluster port cannot be bound; the message says which and why."""


def _check_port_free(host: str, port: int) -> None:
    """Bind the port once with a plain socket, so a busy port is one clear error.

    gRPC's own bind failure is logged by its C core on stderr before Python
    sees it, which would make the start-up error two lines.
    """
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise PortUnavailable("cannot bind the cluster port %s:%d: %s" % (host, port, exc.strerror or exc)) from None


def start_grpc_server(node: ClusterNode, host: str, port: int, secret, max_message_bytes: int,
                      credentials: Optional[grpc.ServerCredentials] = None) -> grpc.Server:
    """Bind and start the cluster's gRPC server (over TLS with `credentials`); PortUnavailable if it cannot bind."""
    _check_port_free(host, port)
    interceptors = [SecretInterceptor(secret)] if secret else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="grpc"),
                         interceptors=interceptors, options=channel_options(max_message_bytes)
                         + [("grpc.so_reuseport", 0)])
    pb_grpc.add_ClusterServicer_to_server(ClusterService(node), server)
    try:
        address = "%s:%d" % (host, port)
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise PortUnavailable("cannot bind the cluster port %s:%d: %s" % (host, port, exc)) from None
    if bound == 0:
        raise PortUnavailable("cannot bind the cluster port %s:%d" % (host, port))
    server.start()
    return server
