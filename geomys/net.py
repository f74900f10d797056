"""The client-facing TCP server: one thread per connection, MessagePack in and out.

Each handler thread reads what the socket has, decodes every whole request in
it with a streaming unpacker, runs them through the engine, and answers them
all in one send once the records they produced are safe: with writethrough
on a plaintext connection, the append-only file's flusher sends them after
its fsync (geomys/outbox.py); otherwise the handler waits, then sends. On a
TLS listener the handler thread first does the handshake.
"""

import logging
import select
import socket
import socketserver
import threading
from typing import Optional

from . import protocol
from .commands.table import OK
from .engine import ClientGone, Context, Engine
from .errors import GeomysError, InternalError
from .outbox import MSG_DONTWAIT, Drainer, Outbox
from .tls import ServerTls

logger = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
SEND_SLICE_BYTES = 1024 * 1024
# A well-formed value that is not a map gets a BAD_REQUEST and the connection
# stays open; a long run of them in one read is text or noise, not a client
# speaking MessagePack, and is treated like undecodable bytes.
GARBAGE_RUN = 8
# Until a client on a server with requirepass has sent the right AUTH, its
# requests may be this big at most (PING and AUTH fit easily), so a stranger
# cannot make the server buffer max_request_bytes per connection.
PREAUTH_MAX_REQUEST_BYTES = 16 * 1024
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)
OK_BYTES = protocol.new_packer().pack(OK)  # the commonest reply, packed once
# A pipeline answered only OK (writes, mostly) goes out as OK_BYTES repeated,
# made in one step, as long as that stays within a slice. One read cannot
# hold that many requests today; the bound keeps the slice rule if it could.
OKS_PER_SLICE = SEND_SLICE_BYTES // len(OK_BYTES)
# A TLS client has this long to finish its handshake.
HANDSHAKE_TIMEOUT_SECONDS = 10.0


class ClientHandler(socketserver.BaseRequestHandler):
    """Serves one client connection until it closes."""

    server: "GeomysServer"

    def setup(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.packer = protocol.new_packer()
        self.pending: list[dict] = []  # replies not sent yet, packed together by _flush
        self.sinks = self.server.engine.sinks  # the engine's own list, so a sink added later shows here
        self.ctx = Context(self.server.engine, "%s:%s" % self.client_address[:2],
                           before_block=self._flush, is_connected=self._is_connected)
        # Replies the append-only file's flusher sends after its fsync. Not on
        # TLS, where one thread at a time may use the connection, nor where
        # a send cannot be made non-blocking.
        self.outbox = Outbox(sock, self.server.drainer) if self.server.tls is None and MSG_DONTWAIT else None

    def handle(self) -> None:
        engine = self.server.engine
        try:
            if self.server.tls is not None and not self._start_tls():
                return
            engine.connect(self.ctx)
            try:
                self._serve()
            except (ClientGone, ConnectionError, TimeoutError):
                pass
            except OSError as exc:
                logger.debug("connection %s ended: %s", self.ctx.address, exc)
            finally:
                if self.outbox is not None:
                    # Kept for good: the socket closes only once no reply is on its
                    # way, and nothing may be posted after that.
                    self.outbox.hold()
                engine.disconnect(self.ctx)
                if self.server.tls is not None:
                    self.request.close()  # socketserver closes only the plain socket, which TLS took over
        finally:
            self.server.client_finished()

    def _start_tls(self) -> bool:
        """Wrap the connection in TLS with the current certificate; False if the handshake fails.

        The handshake runs here, in the client's own thread, not in the
        acceptor: a slow client, or one speaking plaintext, delays only itself.
        """
        raw = self.request
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
            sock = self.server.tls.context.wrap_socket(raw, server_side=True)
            sock.settimeout(None)
        except OSError as exc:  # ssl.SSLError included; the failed SSLSocket has closed itself
            self.server.handshake_failed()
            logger.debug("TLS handshake with %s failed: %s", self.ctx.address, exc)
            return False
        self.request = sock
        return True

    def _serve(self) -> None:
        sock, ctx, engine = self.request, self.ctx, self.server.engine
        execute_batch, pending, sinks = engine.execute_batch, self.pending, self.sinks
        sendall, pack = sock.sendall, self.packer.pack
        max_bytes = self.server.max_request_bytes
        limit = max_bytes if ctx.authenticated else min(max_bytes, PREAUTH_MAX_REQUEST_BYTES)
        unpacker = protocol.new_unpacker(max_bytes)
        tell = unpacker.tell
        fed = 0    # bytes fed to the unpacker so far
        start = 0  # stream offset where the request being decoded began
        while True:
            data = sock.recv(READ_SIZE)
            if not data:
                return
            odd_run = 0
            while data:
                # The limit is per request: feed at most `limit` bytes counted
                # from the start of the unfinished request, decode every whole
                # request, then go on. Many small pipelined requests arriving in
                # one read are thus never mistaken for one over the limit, and a
                # request over it is caught even if it trickles in.
                room = limit - (fed - start)
                if len(data) <= room:  # the usual case: all of it fits
                    chunk, data = data, None
                else:
                    data = memoryview(data)  # slices of a view copy nothing
                    chunk, data = data[:room], data[room:]
                try:
                    if not chunk:
                        raise protocol.msgpack.BufferFull
                    unpacker.feed(chunk)
                except protocol.msgpack.BufferFull:
                    self._close_with(protocol.too_large_reply(limit) if ctx.authenticated
                                     else protocol.unauthenticated_too_large_reply(limit))
                    return
                fed += len(chunk)
                requests = []
                try:
                    for request in unpacker:
                        start = tell()
                        if type(request) is dict:
                            odd_run = 0
                        else:
                            odd_run += 1
                            if odd_run > GARBAGE_RUN:
                                # Answer none of the run: drop its requests still
                                # here and the replies of those from earlier chunks.
                                in_chunk = min(GARBAGE_RUN, len(requests))
                                del requests[len(requests) - in_chunk:]
                                execute_batch(requests, ctx, pending)
                                del pending[len(pending) - (GARBAGE_RUN - in_chunk):]
                                self._close_with(protocol.not_msgpack_reply())
                                return
                        requests.append(request)
                        if start == fed:
                            # Every byte fed is decoded. Asking the unpacker for
                            # more would only raise StopIteration, which msgpack
                            # builds a traceback for: a tenth of a short read's cost.
                            # tell() is read here, after each whole request, and
                            # not once after the loop: after a StopIteration it
                            # also counts the bytes of an unfinished request.
                            break
                except protocol.DECODE_ERRORS:
                    execute_batch(requests, ctx, pending)
                    self._close_with(protocol.not_msgpack_reply())
                    return
                execute_batch(requests, ctx, pending)
                if limit != max_bytes and ctx.authenticated:  # this read's AUTH lifted the limit
                    limit = max_bytes
            if sinks:
                self._flush()
            elif len(pending) == 1:  # the commonest read, one request, sent as _send would
                reply = pending.pop()
                sendall(OK_BYTES if reply is OK else pack(reply))
            elif pending:  # _flush's first case, taken here on the hot path: nothing to wait for
                self._send(pending)

    def _flush(self) -> None:
        """Send every pending reply, in order, once the records they reveal are safe.

        Without persistence or a cluster every record is safe at once. With
        them, the replies are handed to the outbox when the sink can call
        back (writethrough) and they pack to less than a slice: this thread
        goes back to reading, and the flusher sends them after its fsync.
        Otherwise this thread waits for the sinks, then sends.
        """
        pending = self.pending
        if not pending:
            return
        if not self.sinks:
            self._send(pending)
            return
        outbox = self.outbox
        if outbox is None:  # TLS: this thread waits and sends
            self._settle()
            self._send(pending)
            return
        outbox.hold()  # replies still on their way go first
        handed_over = False
        try:
            data = self._pack_small(pending)
            if data is not None:
                outbox.post(data, len(pending))
                # The hold goes with them: whoever finishes sending them lets it go.
                handed_over = self.server.engine.settle_later(self.ctx, outbox.deliver)
                if handed_over:
                    pending.clear()
                    return
            if self._settle() and data is not None:
                pending.clear()
                self.request.sendall(data)
            else:
                self._send(pending)
        finally:
            if not handed_over:
                outbox.release()

    def _settle(self) -> bool:
        """Wait until the pending replies are safe; False if they never will be, each then replaced by the error."""
        try:
            self.server.engine.settle(self.ctx)
            return True
        except GeomysError as exc:
            # The records these replies depend on may never become safe
            # (e.g. leadership was lost): confirm none of them.
            self.pending[:] = [protocol.error_reply(exc)] * len(self.pending)
            return False

    def _pack_small(self, pending: list) -> Optional[bytes]:
        """The pending replies packed as one payload; None if several reach SEND_SLICE_BYTES.

        One reply is packed whatever its size: sending it needs it whole anyway.
        """
        data = self._pack_at_once(pending)
        if data is not None:
            return data
        out, size = [], 0
        for data in map(self.packer.pack, pending):  # map packs one reply per turn of the loop
            size += len(data)
            if size >= SEND_SLICE_BYTES:
                return None  # sent a slice at a time by _send, which packs them again
            out.append(data)
        return b"".join(out)

    def _pack_at_once(self, pending: list) -> Optional[bytes]:
        """The replies packed in one step where that is cheap and safe, else None.

        That is one reply (a read of one request, the commonest case without
        pipelining), or replies that are all OK and fit in a slice.
        """
        if len(pending) == 1:
            reply = pending[0]
            return OK_BYTES if reply is OK else self.packer.pack(reply)
        return _all_ok(pending)

    def _send(self, pending: list) -> None:
        """Send and clear the pending replies, in this thread."""
        data = self._pack_at_once(pending)
        if data is not None:
            pending.clear()
            self.request.sendall(data)
            return
        pack, send = self.packer.pack, self.request.sendall
        # Packed and sent a slice at a time: a client that pipelines many
        # reads of a big value and never reads the answers blocks this
        # thread in sendall instead of growing the server's memory. The size
        # is checked after every reply (map packs one per turn of the loop),
        # so no more than a slice and one reply are ever packed and not yet sent.
        out, size = [], 0
        for data in map(pack, pending):
            out.append(data)
            size += len(data)
            if size >= SEND_SLICE_BYTES:
                send(b"".join(out))
                out, size = [], 0
        pending.clear()
        if out:
            send(b"".join(out))

    def _close_with(self, reply: dict) -> None:
        """Answer what was decoded so far, then a final error, and end the connection."""
        self.pending.append(reply)
        self._flush()

    def _is_connected(self) -> bool:
        """Tell, without blocking, whether the client still has its end open.

        poll's POLLRDHUP (Linux) sees the client's FIN even behind requests it
        sent after the blocked one and that are still unread, where a one-byte
        MSG_PEEK would find those bytes and answer yes; elsewhere, the peek.
        """
        if _POLLRDHUP:
            try:
                poller = select.poll()
                poller.register(self.request, _POLLRDHUP)
                return not poller.poll(0)  # any event (RDHUP, HUP, ERR) means gone
            except (OSError, ValueError):
                return False
        try:
            return self.request.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False


def _all_ok(pending: list) -> Optional[bytes]:
    """The replies packed at once if every one is OK and they fit in a slice; else None.

    `pending` must not be empty. The first reply rules out most other
    pipelines at the cost of one test.
    """
    count = len(pending)
    if pending[0] is OK and count <= OKS_PER_SLICE and pending.count(OK) == count:
        return OK_BYTES * count
    return None


class ClientSlots:
    """The max_clients limit, shared by every client listener of a node."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Count a client in; False if the limit is reached."""
        with self._lock:
            if self._active >= self.limit:
                return False
            self._active += 1
            return True

    def give_back(self) -> None:
        """Count a client out."""
        with self._lock:
            self._active -= 1


class GeomysServer(socketserver.ThreadingTCPServer):
    """ThreadingTCPServer with a client limit, a deep listen backlog, daemon handler threads, optional TLS."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(self, address: tuple, engine: Engine, max_clients: int, max_request_bytes: int,
                 tls: Optional[ServerTls] = None, slots: Optional[ClientSlots] = None) -> None:
        self.engine = engine
        self.max_clients = max_clients
        self.max_request_bytes = max_request_bytes
        self.tls = tls
        self.slots = slots or ClientSlots(max_clients)
        self.drainer = Drainer()  # finishes sending what a client's socket could not take at once
        self.handshake_failures = 0
        self._failures_lock = threading.Lock()
        super().__init__(address, ClientHandler)

    def process_request(self, request, client_address) -> None:
        if not self.slots.take():
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.client_finished()
            raise

    def _refuse(self, request) -> None:
        """Tell a client over max_clients why, and close it (from the accept thread, so briefly).

        A TLS client is only closed: a reply before the handshake would be noise to it.
        """
        reply = protocol.error_reply(InternalError(
            "max number of clients reached (max_clients=%d)" % self.max_clients))
        if self.tls is None:
            try:
                request.settimeout(0.5)
                request.sendall(protocol.new_packer().pack(reply))
            except OSError:
                pass
        self.shutdown_request(request)

    def client_finished(self) -> None:
        """Count a client handler out."""
        self.slots.give_back()

    def handshake_failed(self) -> None:
        """Count a TLS handshake that failed (shown by INFO)."""
        with self._failures_lock:
            self.handshake_failures += 1

    def handle_error(self, request, client_address) -> None:
        logger.exception("unexpected error serving %s", client_address)
