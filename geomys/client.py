"""Client library: `Client` talks to a Geomys server over one TCP connection; `Pipeline` batches.

Imports only `geomys.errors` and, for TLS, `geomys.tls` (plus socket, ssl and
msgpack). A Client is thread-safe:
one lock covers each request/response exchange, so threads share its
connection in turn. Server errors raise the `geomys.errors` class of their code.
"""

import socket
import ssl as ssl_mod
import threading
from typing import Any, Callable, Optional

import msgpack

from .errors import GeomysError, InternalError, from_code
from .tls import client_context

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
DEFAULT_CONNECT_TIMEOUT = 10.0
READ_SIZE = 256 * 1024

_BLOCKING_POPS = frozenset({"BLPOP", "BRPOP"})
_DECODE_ERRORS = (ValueError, msgpack.exceptions.UnpackException)

Convert = Callable[[dict], Any]


class GeomysConnectionError(ConnectionError):
    """The server could not be reached, or the connection broke or timed out during a call.

    The broken connection is dropped and the next call opens a new one. The
    command that was in flight is never re-sent: it may or may not have run.
    """


class _Connection:
    """One open socket plus the streaming decoder of its replies."""

    __slots__ = ("sock", "unpacker")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # strict_map_key=False: INFO's `nodes` map is keyed by integer node ids.
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def read_reply(self) -> Any:
        """Return the next whole reply, reading from the socket as needed."""
        unpacker = self.unpacker
        while True:
            try:
                return next(unpacker)
            except StopIteration:
                pass
            data = self.sock.recv(READ_SIZE)
            if not data:
                raise GeomysConnectionError("connection closed by the server")
            unpacker.feed(data)

    def is_idle(self) -> bool:
        """Tell, without blocking, that the socket is open and holds no unread bytes.

        Between two exchanges nothing should arrive; an EOF means the server
        closed the connection (it restarted, or refused us), which is found out
        here before sending, so a command is never lost to a stale socket.
        Leaves the socket non-blocking: the caller sets the timeout it needs.
        A TLS socket cannot peek; it is read instead (nothing should be there,
        and if something is, the connection is dropped anyway). That read also
        takes in any TLS session ticket the server sent after the handshake.
        """
        sock = self.sock
        try:
            sock.settimeout(0.0)
            if isinstance(sock, ssl_mod.SSLSocket):
                sock.recv(1)
            else:
                sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl_mod.SSLWantReadError, ssl_mod.SSLWantWriteError):
            return True
        except OSError:
            return False
        return False  # EOF, or bytes nobody asked for (a refusal sent before closing)

    def close(self) -> None:
        """Close the socket, waking any thread blocked on it."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _check(reply: Any) -> dict:
    """Return an OK reply map; raise the error class of an ERROR reply."""
    if type(reply) is not dict:
        raise InternalError("malformed reply from the server: %r" % (reply,))
    if reply.get("status") == "ERROR":
        raise from_code(str(reply.get("code", "INTERNAL")), str(reply.get("message", "")))
    return reply


def _result(reply: Any, convert: Convert) -> Any:
    """Convert one reply to its method's Python value (raising on ERROR)."""
    return convert(_check(reply))


def _value(reply: dict) -> Any:
    return reply.get("value")


def _message(reply: dict) -> Any:
    return reply.get("message")


def _true(reply: dict) -> bool:
    return True


def _int(reply: dict) -> int:
    return int(reply["value"])


def _bool(reply: dict) -> bool:
    return bool(reply["value"])


def _map(reply: dict) -> dict:
    return reply


class _Commands:
    """One method per server command; subclasses decide whether a request runs now or is queued."""

    consistent: Optional[bool] = None   # what reads send as 'consistent' when a call does not say

    def _request(self, request: dict, convert: Convert) -> Any:
        raise NotImplementedError

    def _read(self, request: dict, consistent: Optional[bool]) -> dict:
        """Add the 'consistent' field a read asks for (none: the server's read_consistency decides)."""
        if consistent is None:
            consistent = self.consistent
        if consistent is not None:
            request["consistent"] = consistent
        return request

    def execute_command(self, command: str, **fields: Any) -> Any:
        """Send `{'command': command, **fields}`; the result is the whole reply map."""
        return self._request({"command": command, **fields}, _map)

    def ping(self) -> Any:
        """PING -> 'PONG'."""
        return self._request({"command": "PING"}, _message)

    def echo(self, message: str) -> Any:
        """ECHO -> `message`, as the server echoes it."""
        return self._request({"command": "ECHO", "message": message}, _message)

    def set(self, key: str | bytes, value: str | bytes, exp: Optional[int] = None) -> Any:
        """SET -> True. `exp` is a TTL in milliseconds; KeyExists if `key` exists (SET never overwrites)."""
        request = {"command": "SET", "key": key, "value": value}
        if exp is not None:
            request["exp"] = exp
        return self._request(request, _true)

    def get(self, key: str | bytes, consistent: Optional[bool] = None) -> Any:
        """GET -> the stored value (str, or bytes if it was stored as bin). NotFound, WrongType.

        `consistent=True` asks a cluster node for a linearizable read (NoLeader
        if it cannot confirm one); None sends what the Client was created with.
        """
        return self._request(self._read({"command": "GET", "key": key}, consistent), _value)

    def incr(self, key: str | bytes, offset: int = 1) -> Any:
        """INCR -> the new value as an int. NotInteger, Overflow, BadRequest if `offset` < 0."""
        return self._request({"command": "INCR", "key": key, "offset": offset}, _int)

    def push(self, key: str | bytes, value: str | bytes) -> Any:
        """PUSH -> True. Appends `value` at the rear of the list at `key`. WrongType."""
        return self._request({"command": "PUSH", "key": key, "value": value}, _true)

    def lpop(self, key: str | bytes) -> Any:
        """LPOP -> the first element. NotFound if the list is absent, WrongType."""
        return self._request({"command": "LPOP", "key": key}, _value)

    def rpop(self, key: str | bytes) -> Any:
        """RPOP -> the last element. NotFound if the list is absent, WrongType."""
        return self._request({"command": "RPOP", "key": key}, _value)

    def blpop(self, key: str | bytes, timeout: float) -> Any:
        """BLPOP -> the first element, waiting up to `timeout` seconds (0: forever). Timeout, WrongType."""
        return self._request({"command": "BLPOP", "key": key, "timeout": timeout}, _value)

    def brpop(self, key: str | bytes, timeout: float) -> Any:
        """BRPOP -> the last element, waiting up to `timeout` seconds (0: forever). Timeout, WrongType."""
        return self._request({"command": "BRPOP", "key": key, "timeout": timeout}, _value)

    def llen(self, key: str | bytes, consistent: Optional[bool] = None) -> Any:
        """LLEN -> the list's length as an int (0 if absent). WrongType. `consistent`: as for get."""
        return self._request(self._read({"command": "LLEN", "key": key}, consistent), _int)

    def delete(self, key: str | bytes) -> Any:
        """DEL -> the number of keys removed as an int: 1, or 0 if `key` was absent."""
        return self._request({"command": "DEL", "key": key}, _int)

    def exists(self, key: str | bytes, consistent: Optional[bool] = None) -> Any:
        """EXISTS -> True if `key` exists, else False (a bool, not the wire's 1/0). `consistent`: as for get."""
        return self._request(self._read({"command": "EXISTS", "key": key}, consistent), _bool)

    def flushdb(self) -> Any:
        """FLUSHDB -> True, once every key (and the persisted file) is cleared."""
        return self._request({"command": "FLUSHDB"}, _true)

    def info(self) -> Any:
        """INFO -> the server's state as a dict."""
        return self._request({"command": "INFO"}, _value)

    def auth(self, password: str) -> Any:
        """AUTH -> True. AuthFailed on a wrong password; a right one is re-sent on every reconnect."""
        return self._request({"command": "AUTH", "value": password}, _true)

    def compact(self) -> Any:
        """COMPACT -> True, once the append-only file is rewritten to the current state."""
        return self._request({"command": "COMPACT"}, _true)


class Client(_Commands):
    """A connection to one Geomys server, opened lazily and reopened after a failure.

    Thread-safe: one lock covers each request/response exchange, so threads
    take turns on the one connection. A blocking pop holds that lock for its
    whole wait, stalling every other thread of this Client: give blocking
    pops their own Client. `timeout` bounds the wait for a reply (None: no
    limit; a blocking pop adds its own timeout to it); `connect_timeout`
    bounds opening the connection (and the TLS handshake). If `password` is
    given, AUTH is sent on every (re)connect.

    With `ssl=True` the connection is TLS (the server's tls_port): the
    server's certificate must chain to `ssl_ca_certs` (a PEM file; default:
    the system's CAs) and, unless `ssl_check_hostname` is False, name `host`.
    `ssl_certfile` and `ssl_keyfile` are the client certificate a server
    with tls_auth_clients asks for. Bad files raise geomys.tls.TlsError here.

    `consistent` is what get, llen and exists send as their 'consistent'
    field when a call does not say: True asks a cluster node for linearizable
    reads, False for local ones; None sends nothing, so the server's
    read_consistency decides (docs/cluster.md).
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, password: Optional[str] = None,
                 timeout: Optional[float] = None, *,
                 connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT, ssl: bool = False,
                 ssl_ca_certs: Optional[str] = None, ssl_certfile: Optional[str] = None,
                 ssl_keyfile: Optional[str] = None, ssl_check_hostname: bool = True,
                 consistent: Optional[bool] = None) -> None:
        self.host = host
        self.consistent = consistent
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._ssl_context = (client_context(ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_check_hostname)
                             if ssl else None)
        self._password = password
        self._conn: Optional[_Connection] = None
        self._lock = threading.Lock()
        self._packer = msgpack.Packer(use_bin_type=True)

    def __repr__(self) -> str:
        return "Client(host=%r, port=%r)" % (self.host, self.port)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """HOST:PORT of the server, as shown in error messages."""
        return "%s:%s" % (self.host, self.port)

    def close(self) -> None:
        """Close the connection; a later call opens a new one.

        Takes no lock, so another thread blocked in a call (a blocking pop) is
        woken with GeomysConnectionError.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def execute(self, command: str, **fields: Any) -> dict:
        """Send any command with the given request fields and return the whole reply map.

        For commands without a method (or added to the server later). Raises
        the error class of the reply's code like every other method.
        """
        return self.execute_command(command, **fields)

    def pipeline(self) -> "Pipeline":
        """Return a Pipeline that queues commands and sends them in one write."""
        return Pipeline(self)

    def _request(self, request: dict, convert: Convert) -> Any:
        return _result(self._exchange([request])[0], convert)

    def _exchange(self, requests: list[dict]) -> list:
        """Send `requests` in one write and return their raw replies, in order.

        A broken, timed-out or interrupted exchange drops the connection: a
        reply still on its way must never be read as the answer to a later
        request.
        """
        with self._lock:
            data = b"".join(self._packer.pack(request) for request in requests)
            conn = self._ready_connection()
            timeout = self._reply_timeout(requests)
            try:
                conn.sock.settimeout(timeout)
                conn.sock.sendall(data)
                replies = [conn.read_reply() for _ in requests]
            except BaseException as exc:
                self._drop(conn)
                error = self._connection_error(exc)
                if error is exc:
                    raise
                raise error from exc
            self._remember_auth(requests, replies)
            return replies

    def _ready_connection(self) -> _Connection:
        """Return an idle open connection, opening (and authenticating) a new one if needed."""
        conn = self._conn
        if conn is not None:
            if conn.is_idle():
                return conn
            self._drop(conn)
        conn = self._connect()
        if self._password is not None:
            try:
                conn.sock.sendall(self._packer.pack({"command": "AUTH", "value": self._password}))
                reply = conn.read_reply()
            except BaseException as exc:
                conn.close()
                error = self._connection_error(exc)
                if error is exc:
                    raise
                raise error from exc
            try:
                _check(reply)
            except GeomysError:
                conn.close()
                raise
        self._conn = conn
        return conn

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise GeomysConnectionError("could not connect to %s (%s)" % (self.address, reason)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl_context is not None:
            try:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)
            except OSError as exc:  # ssl.SSLError and its certificate errors are OSErrors
                sock.close()
                reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
                raise GeomysConnectionError("TLS handshake with %s failed (%s)" % (self.address, reason)) from exc
        return _Connection(sock)

    def _drop(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.close()

    def _connection_error(self, exc: BaseException) -> BaseException:
        """Translate what broke an exchange into GeomysConnectionError (other exceptions pass)."""
        if isinstance(exc, GeomysConnectionError):
            return exc
        if isinstance(exc, TimeoutError):
            return GeomysConnectionError("no reply from %s in time; connection closed" % self.address)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            return GeomysConnectionError("connection to %s lost (%s)" % (self.address, reason))
        if isinstance(exc, _DECODE_ERRORS):
            return GeomysConnectionError("unreadable reply from %s; connection closed" % self.address)
        return exc

    def _reply_timeout(self, requests: list[dict]) -> Optional[float]:
        """The socket timeout for an exchange: `timeout` plus the wait of any blocking pop in it."""
        if self.timeout is None:
            return None
        total = self.timeout
        for request in requests:
            command = request.get("command")
            if isinstance(command, str) and command.upper() in _BLOCKING_POPS:
                try:
                    wait = float(request.get("timeout") or 0)
                except (TypeError, ValueError):
                    continue  # the server rejects it at once
                if wait <= 0:
                    return None
                total += wait
        return total

    def _remember_auth(self, requests: list[dict], replies: list) -> None:
        """Keep the password of an AUTH sent through this client, to repeat it on reconnect."""
        for request, reply in zip(requests, replies):
            command = request.get("command")
            if isinstance(command, str) and command.upper() == "AUTH":
                ok = type(reply) is dict and reply.get("status") == "OK"
                self._password = request.get("value") if ok else None


class Pipeline(_Commands):
    """Queues commands of one Client and sends them all in a single write.

    Every command method queues its request and returns the pipeline, so calls
    chain; `execute()` sends the batch and returns the results in order. As a
    context manager, leaving the block without `execute()` discards the queue.
    The generic method is `execute_command`, since `execute` runs the batch.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.consistent = client.consistent
        self._queue: list[tuple[dict, Convert]] = []

    def __len__(self) -> int:
        return len(self._queue)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reset()

    def reset(self) -> None:
        """Discard every queued command."""
        self._queue.clear()

    def _request(self, request: dict, convert: Convert) -> "Pipeline":
        self._queue.append((request, convert))
        return self

    def execute(self, raise_on_error: bool = True) -> list:
        """Send the queued commands in one write and return their results, in order.

        Every reply is read before anything is raised, so the connection stays
        in step. With `raise_on_error`, the first error is raised; without,
        errors are returned in the list as exception instances. The queue is
        emptied either way.
        """
        queued, self._queue = self._queue, []
        if not queued:
            return []
        replies = self.client._exchange([request for request, _ in queued])
        results: list = []
        first_error: Optional[GeomysError] = None
        for (_, convert), reply in zip(queued, replies):
            try:
                results.append(_result(reply, convert))
            except GeomysError as exc:
                first_error = first_error or exc
                results.append(exc)
        if raise_on_error and first_error is not None:
            raise first_error
        return results
