"""Replies that wait for their records to be durable, sent by the thread that makes them so.

With persistence writethrough, a reply may leave only after the fsync that
covers the records it reveals. A connection's thread could wait for that
fsync and then send, but every such wait is one more sleep and wake-up per
request, each a context switch and a queue for the GIL: it made writethrough
cost twice the CPU per request of no persistence (docs/performance.md).
Instead the connection's thread packs its replies, posts them here and goes
back to reading; the append-only file's flusher calls `deliver` right after
the fsync, and it sends them without blocking.

Order: a connection's replies leave in the order they were made because the
outbox is held from the moment replies are posted until they are sent, and
the connection's thread takes it before it sends anything else.
"""

import logging
import socket
import threading
from typing import Optional

from . import protocol
from .errors import GeomysError

logger = logging.getLogger(__name__)

# Linux's flag for one send that never blocks, whatever the socket's mode.
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class Outbox:
    """One plaintext connection's posted replies, and the hold that keeps its sends in order."""

    __slots__ = ("_sock", "_hold", "_data", "_count")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # Held by the connection's thread while it sends, and from a post
        # until its delivery is done; a plain Lock, so the delivering thread
        # may release it.
        self._hold = threading.Lock()
        self._data: Optional[bytes] = None
        self._count = 0

    def hold(self) -> None:
        """Wait until no posted reply is on its way, and keep others from posting (the connection's thread)."""
        self._hold.acquire()

    def release(self) -> None:
        """Let go of the hold, dropping what was posted but not handed to `deliver`."""
        self._data = None
        self._hold.release()

    def post(self, data: bytes, count: int) -> None:
        """Keep `count` packed replies for `deliver` (the caller holds the outbox, and `deliver` releases it)."""
        self._data = data
        self._count = count

    def deliver(self, error: Optional[GeomysError]) -> None:
        """Send the posted replies, or if `error` (their records will never be safe) that error for each.

        Called once per post, by the thread that settled the records; never
        blocks it. Whatever the client's socket cannot take at once is sent
        by a thread of its own, which keeps the hold until it is done: a
        client that reads slowly holds up only its own connection.
        """
        if error is None:
            data = self._data
        else:  # its own packer: the connection's thread may be using its own
            data = protocol.new_packer().pack(protocol.error_reply(error)) * self._count
        self._data = None
        try:
            sent = self._sock.send(data, MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:  # the client is gone: its own thread finds out on its next read
            self._hold.release()
            return
        if sent == len(data):
            self._hold.release()
            return
        threading.Thread(target=self._send_rest, args=(memoryview(data)[sent:],),
                         name="geomys-outbox", daemon=True).start()

    def _send_rest(self, rest: memoryview) -> None:
        try:
            self._sock.sendall(rest)
        except OSError:
            pass  # the client is gone: its own thread finds out on its next read
        finally:
            self._hold.release()
