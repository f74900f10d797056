"""Wiring: config -> logging -> TLS material -> store -> AOF replay -> engine -> TCP servers.

`main` is the `geomys` console script. `GeomysNode` owns the pieces and the
order in which they start and stop; the main thread only waits for a signal
(SIGINT/SIGTERM stop, SIGHUP reloads the TLS files).
"""

import logging
import signal
import sys
import threading
from typing import Optional

from . import __version__, config as config_mod, records
from .aof import AofError, AppendOnlyFile, repair
from .clock import SystemClock
from .config import Config
from .engine import Engine
from .memory import format_size, rss_bytes
from .net import ClientSlots, GeomysServer
from .notify import notify
from .store import Store
from .tls import ServerTls, TlsError, TlsFiles

logger = logging.getLogger("geomys")

SWEEP_INTERVAL_SECONDS = 0.1
SWEEP_BATCH = 1000


class ListenError(Exception):
    """A client port cannot be bound; the message says which and why."""


class StartError(Exception):
    """The node could not start (a cluster port, a join); the message is shown to the user."""


class _NodeIdFilter(logging.Filter):
    """Adds the node id to every log record, so interleaved cluster logs stay readable."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        return True


def setup_logging(config: Config) -> None:
    """Configure the root logger once: level, destination, node id on every line."""
    handler = logging.FileHandler(config.log_file) if config.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d node=%(node_id)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_NodeIdFilter(config.node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)


class GeomysNode:
    """One running Geomys server and everything it owns."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = SystemClock()
        self.store = Store()
        self.engine = Engine(self.store, self.clock, requirepass=config.requirepass)
        self.engine.consistent_by_default = config.read_consistency == "linearizable"
        self.aof: Optional[AppendOnlyFile] = None
        self.server: Optional[GeomysServer] = None       # plaintext clients (none if port = 0)
        self.tls_server: Optional[GeomysServer] = None   # TLS clients (tls_port)
        self.tls: Optional[ServerTls] = None
        self.cluster = None        # a ClusterNode when this node is part of a cluster
        self.grpc_server = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Open and replay the AOF, join or found a cluster, bind the port, start serving.

        Raises TlsError (a certificate, key or CA file), ListenError (a
        client port), AofError (the file) or StartError (the cluster port, the join).
        """
        config = self.config
        # Taken before any key is loaded: what the process holds besides its data.
        self.engine.set_max_memory(config.max_memory, rss_bytes())
        if config.tls_port is not None or config.tls_cluster:
            # First: a bad file must stop the start before anything is touched.
            self.tls = ServerTls(TlsFiles(config.tls_cert_file, config.tls_key_file, config.tls_ca_file),
                                 config.tls_auth_clients, clients=config.tls_port is not None,
                                 cluster=config.tls_cluster)
        if config.persistence != "none":
            self._open_aof()
            if config.mode != "join":
                self._start_aof(replay=True)
            # A joining node takes the leader's state: its file is emptied only once
            # the cluster has accepted it (a refused join leaves the file as it was).
        self._warn_if_over_max_memory()
        slots = ClientSlots(config.max_clients)
        if config.port:
            self.server = self._listen(config.port, None, slots)
        if config.tls_port is not None:
            self.tls_server = self._listen(config.tls_port, self.tls, slots)
        self.engine.add_info_source(self._info)
        if config.mode != "standalone":
            self._start_cluster()
        self._spawn("sweeper", self._sweep_loop)
        # A short poll interval lets shutdown() return quickly on SIGTERM.
        for name, server in (("acceptor", self.server), ("tls-acceptor", self.tls_server)):
            if server is not None:
                self._spawn(name, lambda server=server: server.serve_forever(poll_interval=0.1))
        logger.info("Geomys %s started: node %d serving clients on %s (persistence=%s)",
                    __version__, config.node_id, self.listening(), config.persistence)

    def _listen(self, port: int, tls: Optional[ServerTls], slots: ClientSlots) -> GeomysServer:
        """Bind one client port; ListenError names it if that fails."""
        config = self.config
        try:
            return GeomysServer((config.host, port), self.engine, config.max_clients, config.max_request_bytes,
                                tls=tls, slots=slots)
        except OSError as exc:
            raise ListenError("cannot listen on %s:%d: %s" % (config.host, port, exc.strerror or exc)) from None

    def listening(self) -> str:
        """Where clients connect, for the log and systemd's status line."""
        config = self.config
        ports = (["%s:%d" % (config.host, config.port)] if config.port else []) + (
            ["%s:%d (TLS)" % (config.host, config.tls_port)] if config.tls_port is not None else [])
        return " and ".join(ports)

    def reload_tls(self) -> None:
        """Re-read the TLS files (SIGHUP); a failure keeps the current certificate and logs one line."""
        if self.tls is None:
            logger.info("SIGHUP ignored: TLS is not configured")
            return
        try:
            self.tls.reload()
        except TlsError as exc:
            logger.error("TLS reload failed, keeping the current certificate: %s", exc)
            return
        logger.info("TLS certificate reloaded from %s (expires %s)",
                    self.config.tls_cert_file, self.tls.info()["cert_expires"])

    def _warn_if_over_max_memory(self) -> None:
        """Say so when the data loaded already fills max_memory: reads are served, writes get OOM."""
        used, limit = self.engine.used_memory(), self.config.max_memory
        if limit and used >= limit:
            logger.warning("memory in use (%s) is at or above max_memory (%s): serving reads, answering "
                           "commands that add data with OOM until keys are deleted",
                           format_size(used), format_size(limit))

    def _start_cluster(self) -> None:
        # Imported here: a standalone server never loads gRPC, which is most of
        # a cluster node's import time and some 19 MiB of its memory (docs/deploy.md).
        from .cluster.node import ClusterNode, JoinError
        from .cluster.service import PortUnavailable, start_grpc_server

        config = self.config
        cluster_tls = self.tls if config.tls_cluster else None
        self.cluster = ClusterNode(config, self.engine,
                                   channel_credentials=cluster_tls and cluster_tls.grpc_channel_credentials())
        try:
            self.grpc_server = start_grpc_server(self.cluster, config.host, config.grpc_port, config.cluster_secret,
                                                 config.max_request_bytes + (4 << 20),
                                                 credentials=cluster_tls and cluster_tls.grpc_server_credentials())
            self.engine.add_info_source(self.cluster.info)
            self.engine.read_barrier = self.cluster.read_barrier
            if config.mode == "bootstrap":
                self.engine.add_sink(self.cluster)
                self.cluster.bootstrap()
                self.cluster.start()
            else:
                self.cluster.join(prepare=self._accepted)
        except (JoinError, PortUnavailable) as exc:
            raise StartError(str(exc)) from exc

    def _accepted(self) -> None:
        """The cluster took this joining node: start the file afresh, then follow the cluster's state."""
        if self.aof is not None:
            self._start_aof(replay=False)
        self.engine.add_sink(self.cluster)   # after the AOF: replies wait for replication first

    def _open_aof(self) -> None:
        """Open the append-only file and take its lock (a second server on the same file stops here)."""
        config = self.config
        self.aof = AppendOnlyFile(config.persistence_path, config.persistence,
                                  flush_interval_ms=config.flush_interval_ms,
                                  compact_min_bytes=config.compact_min_bytes,
                                  compact_growth_percent=config.compact_growth_percent)
        self.aof.open()

    def _start_aof(self, replay: bool) -> None:
        """Replay the file (or start it empty), start its flusher and log every record from now on."""
        config = self.config
        store = self.store
        if replay:
            with store.lock:
                count = self.aof.replay(lambda record: records.apply(store, record))
            logger.info("replayed %d records from %s (%d keys)", count, config.persistence_path, len(store))
        else:
            self.aof.discard()
        self.aof.start(store.lock, self._snapshot)
        self.engine.add_sink(self.aof)
        self.engine.set_compactor(self.aof.compact)
        self.engine.add_info_source(lambda: {"persistence": self.aof.info()})

    def _snapshot(self) -> list:
        """The effect records that rebuild the current keyspace (caller holds store.lock)."""
        return self.store.snapshot()

    def _info(self) -> dict:
        config = self.config
        info = {
            "node_id": config.node_id,
            "role": "standalone",
            "leader_id": None,
            "leader_address": None,
            "term": 0,
            "nodes": {},
            "address": "%s:%d" % (config.advertise_host, config.client_port),
            "tls": {"clients": False, "cluster": False},
        }
        if self.tls is not None:
            info["tls"] = dict(self.tls.info(), port=config.tls_port,
                               handshake_failures=self.tls_server.handshake_failures if self.tls_server else 0)
        if self.aof is None:
            info["persistence"] = {"mode": "none"}
        return info

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sweep_loop(self) -> None:
        """Remove expired keys in small batches so they do not pile up unread."""
        while not self._stopping.wait(SWEEP_INTERVAL_SECONDS):
            while self.engine.sweep_expired(SWEEP_BATCH) == SWEEP_BATCH and not self._stopping.is_set():
                pass

    def stop(self) -> None:
        """Stop accepting, stop the sweeper, flush and close the AOF."""
        self._stopping.set()
        for server in (self.server, self.tls_server):
            if server is not None:
                server.shutdown()
                server.server_close()
        if self.cluster is not None:
            self.cluster.stop()
        if self.aof is not None:
            self.aof.close()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=1.0).wait(2.0)
        logger.info("node %d stopped", self.config.node_id)


def main(argv=None) -> None:
    """Entry point of the `geomys` command."""
    config = config_mod.load(argv)
    setup_logging(config)
    if config.repair:
        try:
            sys.exit(repair(config.persistence_path))
        except AofError as exc:
            _fail(str(exc))
    # The stop signals are blocked before any thread starts (threads inherit the
    # mask) and then awaited with sigwait: one that arrives at any moment stays
    # pending until it is taken, where a check-then-pause loop could miss it.
    # SIGHUP is taken the same way, so a reload runs on this thread between
    # two waits, never inside another thread's work.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals | {signal.SIGHUP})
    node = GeomysNode(config)
    try:
        node.start()
    except (TlsError, ListenError, AofError, StartError) as exc:
        _fail(str(exc))
    notify("READY=1", "STATUS=serving clients on %s" % node.listening())
    while signal.sigwait(stop_signals | {signal.SIGHUP}) == signal.SIGHUP:
        node.reload_tls()
    logger.info("stop requested; shutting down")
    notify("STOPPING=1")
    node.stop()
    sys.exit(0)


def _fail(message: str) -> None:
    """Report a start-up failure in one line and exit with status 2."""
    root = logging.getLogger()
    if root.handlers and not isinstance(root.handlers[0], logging.FileHandler):
        # stderr gets the one line below, not two. A NullHandler rather than no
        # handler at all: with none, logging's last-resort handler would print
        # the message to stderr anyway.
        root.handlers[:] = [logging.NullHandler()]
    logger.error("%s", message)
    sys.stderr.write("geomys: error: %s\n" % message)
    sys.exit(2)
