"""Server configuration: geomys.conf, GEOMYS_* environment variables and flags.

Precedence (configargparse): command line > environment > config file >
defaults. Every option has one underscore name; the dashed spelling and the
single-dash form (`-node_id=7`, `-port 6767`) are accepted too. `load`
returns a frozen `Config` or exits with status 2 and one line on stderr.

How options constrain each other:
  * failure_timeout >= 2 * heartbeat_interval (a node must miss at least two
    heartbeats before it is declared failed);
  * grpc_port defaults to port + 1000 (tls_port + 1000 when port = 0) and
    must differ from both;
  * port = 0 turns the plaintext client port off and needs tls_port;
    tls_port and tls_cluster need tls_cert_file and tls_key_file;
    tls_cluster and tls_auth_clients (optional or yes) need tls_ca_file;
  * a non-loopback host needs clients to authenticate (requirepass, or
    tls_auth_clients = yes with port = 0) unless protected_mode = no, and a
    cluster node there needs peers to authenticate as well (cluster_secret
    or tls_cluster).
"""

import ipaddress
import os
import sys
from dataclasses import dataclass
from typing import Optional

import configargparse

from . import __version__
from .memory import parse_size
from .tls import AUTH_CLIENTS

DEFAULT_CONFIG_FILE = "~/.geomys/geomys.conf"

READ_CONSISTENCIES = ("local", "linearizable")
PERSISTENCE_MODES = {
    "none": "none",
    "writethrough": "writethrough",
    "writethroughdisk": "writethrough",
    "buffered": "buffered",
    "bufferedwrite": "buffered",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """An option value that is not acceptable; the message is shown to the user."""


def _bool(text) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected yes or no, got %r" % text)


def _positive_int(text) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _port(text) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value


def _port_or_off(text) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 (off) and 65535")
    return value


def _auth_clients(text) -> str:
    value = str(text).strip().lower()
    if value in ("1", "true", "on"):
        value = "yes"
    elif value in ("0", "false", "off"):
        value = "no"
    if value not in AUTH_CLIENTS:
        raise ValueError("must be one of " + ", ".join(AUTH_CLIENTS))
    return value


def _persistence(text) -> str:
    mode = PERSISTENCE_MODES.get(str(text).strip().lower())
    if mode is None:
        raise ValueError("must be one of none, writethrough, buffered")
    return mode


def _read_consistency(text) -> str:
    value = str(text).strip().lower()
    if value not in READ_CONSISTENCIES:
        raise ValueError("must be one of " + ", ".join(READ_CONSISTENCIES))
    return value


def _log_level(text) -> str:
    level = str(text).strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return level


def _size(text) -> int:
    return parse_size(text)


def _address(text) -> str:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT")
    _port(port)
    return str(text)


_positive_int.__name__ = "positive integer"
_positive_float.__name__ = "positive number"
_port.__name__ = "port"
_port_or_off.__name__ = "port or 0"
_auth_clients.__name__ = "no, optional or yes"
_bool.__name__ = "yes/no"
_persistence.__name__ = "persistence mode"
_log_level.__name__ = "log level"
_read_consistency.__name__ = "local or linearizable"
_address.__name__ = "HOST:PORT"
_size.__name__ = "size"


@dataclass(frozen=True, slots=True)
class Option:
    """One server option: its name, parser, default and the line that documents it."""

    name: str
    parse: object
    default: object
    help: str
    flag: bool = False
    shown_default: Optional[str] = None   # how --help names a default computed from other options


OPTIONS = (
    Option("node_id", int, None, "this node's integer id", shown_default="the client port"),
    Option("port", _port_or_off, 6379, "plaintext client port (0: none, clients use tls_port)"),
    Option("host", str, "127.0.0.1", "address to bind the client and cluster ports to"),
    Option("grpc_port", _port, None, "cluster (gRPC) port",
           shown_default="port + 1000, or tls_port + 1000 if port = 0"),
    Option("advertise_host", str, None, "address other nodes dial to reach this one", shown_default="host"),
    Option("bootstrap", _bool, False, "start a new cluster with this node as its leader", flag=True),
    Option("join", _address, None, "HOST:GRPC_PORT of any member of the cluster to join"),
    Option("persistence", _persistence, "none", "none, writethrough or buffered (append-only file)"),
    Option("persistence_path", str, "~/.geomys/persistence.db", "the append-only file"),
    Option("flush_interval_ms", _positive_int, 1000, "buffered mode: milliseconds between flushes"),
    Option("compact_min_bytes", _positive_int, 64 * 1024 * 1024,
           "compact the append-only file only once it is at least this large"),
    Option("compact_growth_percent", _positive_int, 100,
           "...and has grown by this percentage since the last compaction"),
    Option("repair", _bool, False,
           "truncate the append-only file at its first damaged record (keeping a backup) and exit", flag=True),
    Option("heartbeat_interval", _positive_float, 5.0, "seconds between a follower's heartbeats"),
    Option("failure_timeout", _positive_float, 15.0,
           "seconds of silence before a node counts as failed (at least 2 x heartbeat_interval)"),
    Option("rpc_timeout", _positive_float, 2.0, "deadline in seconds of one call between nodes"),
    Option("read_consistency", _read_consistency, "local",
           "GET, LLEN and EXISTS without a 'consistent' field: local (this node's store as it is) or "
           "linearizable (confirmed with the leader first; docs/cluster.md)"),
    Option("backlog_entries", _positive_int, 100000,
           "log entries the leader keeps in memory to catch followers up without a snapshot"),
    Option("backlog_bytes", _positive_int, 64 * 1024 * 1024, "...and at most this many bytes of them"),
    Option("join_timeout", _positive_float, 120.0,
           "seconds a joining node may take to receive the leader's state and become a member"),
    Option("requirepass", str, None, "password clients must send with AUTH"),
    Option("cluster_secret", str, None, "shared secret required on calls between nodes"),
    Option("protected_mode", _bool, True,
           "refuse a non-loopback host unless clients (requirepass, or tls_auth_clients = yes and port = 0) "
           "and, on a cluster node, peers (cluster_secret or tls_cluster) must authenticate"),
    Option("tls_port", _port, None, "TLS client port, beside port or (with port = 0) instead of it"),
    Option("tls_cert_file", str, None, "this node's certificate (PEM; may hold the chain after it)"),
    Option("tls_key_file", str, None, "the private key of tls_cert_file (PEM, not encrypted)"),
    Option("tls_ca_file", str, None, "CA certificates (PEM) that client and peer certificates must chain to"),
    Option("tls_auth_clients", _auth_clients, "no",
           "client certificates on tls_port: no (not asked), optional (checked if sent) or yes (required)"),
    Option("tls_cluster", _bool, False, "calls between nodes over mutual TLS, each side checked against tls_ca_file"),
    Option("max_request_bytes", _positive_int, 64 * 1024 * 1024, "largest request accepted, in bytes"),
    Option("max_clients", _positive_int, 10000, "most client connections at once"),
    Option("max_memory", _size, 0,
           "answer commands that add data with OOM once memory in use reaches this size (kb, mb, gb)",
           shown_default="0, no limit"),
    Option("log_level", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Option("log_file", str, None, "write the log to this file instead of stderr"),
)


@dataclass(frozen=True, slots=True)
class Config:
    """The server's settings, validated."""

    node_id: int
    port: int
    host: str
    grpc_port: int
    advertise_host: str
    bootstrap: bool
    join: Optional[str]
    persistence: str
    persistence_path: str
    flush_interval_ms: int
    compact_min_bytes: int
    compact_growth_percent: int
    repair: bool
    heartbeat_interval: float
    failure_timeout: float
    rpc_timeout: float
    read_consistency: str
    backlog_entries: int
    backlog_bytes: int
    join_timeout: float
    requirepass: Optional[str]
    cluster_secret: Optional[str]
    protected_mode: bool
    tls_port: Optional[int]
    tls_cert_file: Optional[str]
    tls_key_file: Optional[str]
    tls_ca_file: Optional[str]
    tls_auth_clients: str
    tls_cluster: bool
    max_request_bytes: int
    max_clients: int
    max_memory: int
    log_level: str
    log_file: Optional[str]
    config_file: Optional[str] = None
    node_id_explicit: bool = True

    @property
    def client_port(self) -> int:
        """The port clients are told about: the plaintext one, else the TLS one."""
        return self.port or self.tls_port

    @property
    def mode(self) -> str:
        """standalone, bootstrap or join."""
        if self.join:
            return "join"
        return "bootstrap" if self.bootstrap else "standalone"


class _Parser(configargparse.ArgParser):
    """ArgParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:
        sys.stderr.write("%s: error: %s\n" % (self.prog, message))
        sys.exit(2)


def build_parser(default_config_files=(DEFAULT_CONFIG_FILE,)) -> configargparse.ArgParser:
    """Return the option parser (exposed so tests can check geomys.conf covers it)."""
    parser = _Parser(
        prog="geomys",
        description="Geomys key-value server.",
        default_config_files=list(default_config_files),
        auto_env_var_prefix="GEOMYS_",
        allow_abbrev=False,
        args_for_setting_config_path=["--config", "-config"],
        config_arg_help_message="config file (default: %s if it exists)" % DEFAULT_CONFIG_FILE,
    )
    parser.add_argument("--version", "-version", action="version", version="geomys %s" % __version__,
                        help="print the version and exit")
    for opt in OPTIONS:
        names = ["-" + opt.name, "--" + opt.name]
        if "_" in opt.name:
            names.append("--" + opt.name.replace("_", "-"))
        kwargs = dict(dest=opt.name, help="%s (default: %s)" % (opt.help, _shown_default(opt)))
        if opt.flag:
            # `-bootstrap` alone, or `bootstrap = yes` in the file / GEOMYS_BOOTSTRAP=yes.
            kwargs.update(nargs="?", const=True, default=False, type=opt.parse, metavar="yes|no")
        else:
            kwargs.update(type=opt.parse, default=opt.default)
        parser.add_argument(*names, **kwargs)
    return parser


def _shown_default(opt: Option) -> str:
    """The default as --help shows it: computed ones named in words, yes/no for switches, "not set" for none."""
    if opt.shown_default is not None:
        return opt.shown_default
    if type(opt.default) is bool:
        return "yes" if opt.default else "no"
    return "not set" if opt.default is None else str(opt.default)


def load(argv=None, environ=None) -> Config:
    """Parse flags, environment and config file into a Config; exit 2 on any bad value."""
    parser = build_parser()
    ns = parser.parse_args(argv, env_vars=os.environ if environ is None else environ)
    try:
        return validate(vars(ns))
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # unreachable: error() exits


def validate(values: dict) -> Config:
    """Fill derived defaults and check how options constrain each other."""
    values = dict(values)
    config_file = values.pop("config_file", None)
    _check_tls(values)
    port = values["port"] or values["tls_port"]
    values["node_id_explicit"] = values["node_id"] is not None
    if values["node_id"] is None:
        values["node_id"] = port
    if values["grpc_port"] is None:
        values["grpc_port"] = port + 1000
        if values["grpc_port"] > 65535:
            raise ConfigError("%s + 1000 is beyond 65535: set grpc_port explicitly"
                              % ("port" if values["port"] else "tls_port"))
    if values["node_id"] <= 0:
        raise ConfigError("node_id must be a positive integer")
    if values["grpc_port"] in (values["port"], values["tls_port"]):
        raise ConfigError("grpc_port must differ from port and tls_port")
    if values["advertise_host"] is None:
        values["advertise_host"] = values["host"]
    if values["bootstrap"] and values["join"]:
        raise ConfigError("bootstrap and join cannot be used together")
    if values["failure_timeout"] < 2 * values["heartbeat_interval"]:
        raise ConfigError("failure_timeout (%gs) must be at least twice heartbeat_interval (%gs)"
                          % (values["failure_timeout"], values["heartbeat_interval"]))
    # A client certificate authenticates only where no plaintext port lets
    # a client in without one.
    clients_authenticate = values["requirepass"] or (values["tls_auth_clients"] == "yes" and not values["port"])
    if values["protected_mode"] and not clients_authenticate and not _is_loopback(values["host"]):
        raise ConfigError("refusing to listen on %s without client authentication (protected_mode is on); "
                          "set requirepass (or tls_auth_clients = yes with port = 0), or protected_mode = no"
                          % values["host"])
    peers_authenticate = values["cluster_secret"] or values["tls_cluster"]
    if (values["protected_mode"] and (values["bootstrap"] or values["join"]) and not peers_authenticate
            and not _is_loopback(values["host"])):
        # The gRPC port takes forwarded writes without AUTH: on a reachable
        # address only the secret or a peer certificate keeps strangers from
        # writing through it.
        raise ConfigError("refusing to run a cluster node on %s without peer authentication (protected_mode is on); "
                          "set cluster_secret or tls_cluster = yes, or protected_mode = no" % values["host"])
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        if values[name]:
            values[name] = os.path.expanduser(values[name])
    values["persistence_path"] = os.path.expanduser(values["persistence_path"])
    if values["log_file"]:
        values["log_file"] = os.path.expanduser(values["log_file"])
    return Config(config_file=config_file, **values)


def _check_tls(values: dict) -> None:
    """Check that the TLS options asked for have what they need (the files are read at start)."""
    if values["port"] == 0 and values["tls_port"] is None:
        raise ConfigError("port = 0 turns the plaintext port off, so tls_port is needed")
    if values["tls_port"] is not None and values["tls_port"] == values["port"]:
        raise ConfigError("tls_port must differ from port")
    uses = [name for name, on in (("tls_port", values["tls_port"] is not None),
                                  ("tls_cluster", values["tls_cluster"])) if on]
    for name in ("tls_cert_file", "tls_key_file"):
        if uses and not values[name]:
            raise ConfigError("%s needs %s" % (" and ".join(uses), name))
    if values["tls_cluster"] and not values["tls_ca_file"]:
        raise ConfigError("tls_cluster needs tls_ca_file: the CA that peers' certificates must chain to")
    if values["tls_auth_clients"] != "no":
        if values["tls_port"] is None:
            raise ConfigError("tls_auth_clients = %s needs tls_port" % values["tls_auth_clients"])
        if not values["tls_ca_file"]:
            raise ConfigError("tls_auth_clients = %s needs tls_ca_file: the CA that client certificates "
                              "must chain to" % values["tls_auth_clients"])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
