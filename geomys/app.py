"""Wiring: config -> logging -> store -> AOF replay -> engine -> TCP server.

`main` is the `geomys` console script. `GeomysNode` owns the pieces and the
order in which they start and stop; the main thread only waits for a signal.
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
from .net import GeomysServer
from .notify import notify
from .store import Store

logger = logging.getLogger("geomys")

SWEEP_INTERVAL_SECONDS = 0.1
SWEEP_BATCH = 1000


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
        self.aof: Optional[AppendOnlyFile] = None
        self.server: Optional[GeomysServer] = None
        self.cluster: Optional[ClusterNode] = None
        self.grpc_server = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Open and replay the AOF, join or found a cluster, bind the port, start serving.

        Raises OSError (the client port), AofError (the file) or StartError
        (the cluster port, the join).
        """
        config = self.config
        # Taken before any key is loaded: what the process holds besides its data.
        self.engine.set_max_memory(config.max_memory, rss_bytes())
        if config.persistence != "none":
            # A joining node takes the leader's state, so its old file is not replayed.
            self._open_aof(replay=config.mode != "join")
        self._warn_if_over_max_memory()
        self.server = GeomysServer((config.host, config.port), self.engine,
                                   config.max_clients, config.max_request_bytes)
        self.engine.add_info_source(self._info)
        if config.mode != "standalone":
            self._start_cluster()
        self._spawn("sweeper", self._sweep_loop)
        # A short poll interval lets shutdown() return quickly on SIGTERM.
        self._spawn("acceptor", lambda: self.server.serve_forever(poll_interval=0.1))
        logger.info("Geomys %s started: node %d serving clients on %s:%d (persistence=%s)",
                    __version__, config.node_id, config.host, config.port, config.persistence)

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
        self.cluster = ClusterNode(config, self.engine)
        try:
            self.grpc_server = start_grpc_server(self.cluster, config.host, config.grpc_port,
                                                 config.cluster_secret, config.max_request_bytes + (4 << 20))
            self.engine.add_sink(self.cluster)
            self.engine.add_info_source(self.cluster.info)
            if config.mode == "bootstrap":
                self.cluster.bootstrap()
                self.cluster.start()
            else:
                self.cluster.join()
        except (JoinError, PortUnavailable) as exc:
            raise StartError(str(exc)) from exc

    def _open_aof(self, replay: bool = True) -> None:
        config = self.config
        self.aof = AppendOnlyFile(config.persistence_path, config.persistence,
                                  flush_interval_ms=config.flush_interval_ms,
                                  compact_min_bytes=config.compact_min_bytes,
                                  compact_growth_percent=config.compact_growth_percent)
        self.aof.open()
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
            "address": "%s:%d" % (config.advertise_host, config.port),
        }
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
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
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
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    node = GeomysNode(config)
    try:
        node.start()
    except OSError as exc:
        _fail("cannot listen on %s:%d: %s" % (config.host, config.port, exc.strerror or exc))
    except (AofError, StartError) as exc:
        _fail(str(exc))
    notify("READY=1", "STATUS=serving clients on %s:%d" % (config.host, config.port))
    signal.sigwait(stop_signals)
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
