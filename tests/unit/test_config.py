"""geomys.config: flags in every accepted spelling, GEOMYS_* variables, config
files, precedence, derived defaults, cross-option checks and the exit-2 rule.

HOME points at a temporary folder so ~/.geomys/geomys.conf of the machine
running the tests never leaks in.
"""

import os
from pathlib import Path

import pytest

import geomys
from geomys import config

REPO_CONF = Path(__file__).resolve().parents[2] / "geomys.conf"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in [n for n in os.environ if n.startswith("GEOMYS_")]:
        monkeypatch.delenv(name)
    return home


def load(*argv, env=None):
    return config.load(list(argv), env or {})


def write_conf(path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("%s = %s\n" % item for item in options.items()))
    return path


def assert_exit_2(capsys, *argv, env=None, mentions=()):
    """Loading must exit with status 2 and print exactly one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        load(*argv, env=env)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for word in mentions:
        assert word in err, err
    return err


# -- defaults and derived values -------------------------------------------------

def test_defaults_match_the_spec():
    cfg = load()
    assert (cfg.port, cfg.host, cfg.persistence, cfg.flush_interval_ms) == (6379, "127.0.0.1", "none", 1000)
    assert (cfg.heartbeat_interval, cfg.failure_timeout) == (5, 15)
    assert cfg.protected_mode is True and cfg.bootstrap is False and cfg.join is None
    assert cfg.requirepass is None and cfg.cluster_secret is None
    assert (cfg.max_request_bytes, cfg.max_clients, cfg.log_level) == (64 * 1024 * 1024, 10000, "INFO")
    assert cfg.mode == "standalone"


def test_persistence_path_defaults_under_the_home_folder(isolated_home):
    assert load().persistence_path == str(isolated_home / ".geomys" / "persistence.db")


def test_node_id_defaults_to_the_port():
    assert load("--port", "7001").node_id == 7001


def test_grpc_port_defaults_to_port_plus_1000():
    assert load("--port", "7001").grpc_port == 8001


def test_advertise_host_defaults_to_host():
    assert load("--host", "127.0.0.2").advertise_host == "127.0.0.2"


# -- spellings ------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["-node_id=7", "-port=6767"],
    ["-node_id", "7", "-port", "6767"],
    ["--node_id=7", "--port=6767"],
    ["--node_id", "7", "--port", "6767"],
    ["--node-id=7", "--port", "6767"],
])
def test_every_flag_spelling_of_the_spec_works(argv):
    cfg = load(*argv)
    assert (cfg.node_id, cfg.port) == (7, 6767)


def test_dashed_spelling_works_for_every_underscore_option():
    cfg = load("--persistence-path=/tmp/x.db", "--max-request-bytes", "1024", "--flush-interval-ms=5")
    assert (cfg.persistence_path, cfg.max_request_bytes, cfg.flush_interval_ms) == ("/tmp/x.db", 1024, 5)


def test_bootstrap_is_a_switch_on_the_command_line():
    assert load("-bootstrap").bootstrap is True
    assert load("-bootstrap").mode == "bootstrap"


def test_join_takes_host_and_grpc_port():
    cfg = load("-join", "127.0.0.1:7379")
    assert cfg.join == "127.0.0.1:7379" and cfg.mode == "join"


@pytest.mark.parametrize("alias, mode", [
    ("none", "none"), ("writethrough", "writethrough"), ("writethroughdisk", "writethrough"),
    ("buffered", "buffered"), ("bufferedwrite", "buffered"), ("WriteThrough", "writethrough"),
])
def test_persistence_modes_and_their_aliases(alias, mode):
    assert load("--persistence", alias).persistence == mode


# -- environment and files --------------------------------------------------------

def test_environment_variables_are_geomys_plus_the_upper_case_name():
    cfg = load(env={"GEOMYS_PORT": "7100", "GEOMYS_PERSISTENCE_PATH": "/tmp/env.db",
                    "GEOMYS_REQUIREPASS": "pw", "GEOMYS_HEARTBEAT_INTERVAL": "0.5",
                    "GEOMYS_FAILURE_TIMEOUT": "1.5"})
    assert (cfg.port, cfg.persistence_path, cfg.requirepass) == (7100, "/tmp/env.db", "pw")
    assert (cfg.heartbeat_interval, cfg.failure_timeout) == (0.5, 1.5)


def test_config_file_is_read_with_config(tmp_path):
    conf = write_conf(tmp_path / "g.conf", port=7200, requirepass="s3cret", protected_mode="no",
                      persistence="bufferedwrite")
    cfg = load("--config", str(conf))
    assert (cfg.port, cfg.requirepass, cfg.protected_mode, cfg.persistence) == (7200, "s3cret", False, "buffered")
    assert cfg.config_file == str(conf)


def test_home_geomys_conf_is_read_when_no_config_is_given(isolated_home):
    write_conf(isolated_home / ".geomys" / "geomys.conf", port=7300)
    assert load().port == 7300


def test_the_parser_reads_the_default_config_files_it_is_given(tmp_path):
    conf = write_conf(tmp_path / "default.conf", port=7400, log_level="debug")
    ns = config.build_parser(default_config_files=[str(conf)]).parse_args([], env_vars={})
    assert (ns.port, ns.log_level) == (7400, "DEBUG")


def test_a_missing_default_config_file_is_not_an_error(tmp_path):
    ns = config.build_parser(default_config_files=[str(tmp_path / "absent.conf")]).parse_args([], env_vars={})
    assert ns.port == 6379


def test_flags_win_over_environment_which_wins_over_the_file(tmp_path):
    conf = write_conf(tmp_path / "g.conf", port=7001, max_clients=1, log_level="ERROR")
    env = {"GEOMYS_PORT": "7002", "GEOMYS_MAX_CLIENTS": "2"}
    cfg = load("--config", str(conf), "--port", "7003", env=env)
    assert (cfg.port, cfg.max_clients, cfg.log_level) == (7003, 2, "ERROR")


# -- refusals: exit status 2 and one line on stderr -------------------------------

@pytest.mark.parametrize("argv, mentions", [
    (["--port", "abc"], ["port"]),
    (["--port", "0"], ["port"]),
    (["--port", "70000"], ["port"]),
    (["--max_clients", "-1"], ["max_clients"]),
    (["--max_request_bytes", "0"], ["max_request_bytes"]),
    (["--heartbeat_interval", "soon"], ["heartbeat_interval"]),
    (["--persistence", "sometimes"], ["persistence"]),
    (["--protected_mode", "maybe"], ["protected_mode"]),
    (["--log_level", "LOUD"], ["log_level"]),
    (["--join", "nohost"], ["join"]),
    (["--no_such_option", "1"], ["no_such_option"]),
    (["--port", "65000"], ["grpc_port"]),
])
def test_an_invalid_value_exits_2_with_one_line_on_stderr(capsys, argv, mentions):
    assert_exit_2(capsys, *argv, mentions=mentions)


def test_failure_timeout_below_twice_the_heartbeat_is_refused(capsys):
    assert_exit_2(capsys, "--heartbeat_interval", "5", "--failure_timeout", "9.9",
                  mentions=["failure_timeout", "heartbeat_interval"])


def test_failure_timeout_of_exactly_twice_the_heartbeat_is_accepted():
    cfg = load("--heartbeat_interval", "0.5", "--failure_timeout", "1")
    assert (cfg.heartbeat_interval, cfg.failure_timeout) == (0.5, 1.0)


def test_protected_mode_refuses_a_public_host_without_requirepass(capsys):
    assert_exit_2(capsys, "--host", "0.0.0.0", mentions=["0.0.0.0", "requirepass"])


def test_a_public_host_is_allowed_with_requirepass_or_protected_mode_off():
    assert load("--host", "0.0.0.0", "--requirepass", "pw").host == "0.0.0.0"
    assert load("--host", "0.0.0.0", "--protected_mode", "no").host == "0.0.0.0"


@pytest.mark.parametrize("mode", [("--bootstrap",), ("--join", "127.0.0.1:7001")])
def test_protected_mode_refuses_a_public_cluster_node_without_cluster_secret(capsys, mode):
    assert_exit_2(capsys, "--host", "0.0.0.0", "--requirepass", "pw", *mode,
                  mentions=["0.0.0.0", "cluster_secret"])


def test_a_public_cluster_node_is_allowed_with_cluster_secret_or_protected_mode_off():
    assert load("--host", "0.0.0.0", "--requirepass", "pw", "--bootstrap", "--cluster_secret", "s").bootstrap
    assert load("--host", "0.0.0.0", "--bootstrap", "--protected_mode", "no").bootstrap


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "localhost"])
def test_loopback_hosts_need_no_password(host):
    assert load("--host", host).host == host


def test_bootstrap_and_join_together_are_refused(capsys):
    assert_exit_2(capsys, "-bootstrap", "-join", "127.0.0.1:7379", mentions=["bootstrap", "join"])


def test_an_unreadable_config_file_exits_2(capsys, tmp_path):
    assert_exit_2(capsys, "--config", str(tmp_path / "missing.conf"), mentions=["missing.conf"])


def test_a_bad_value_in_the_config_file_exits_2(capsys, tmp_path):
    conf = write_conf(tmp_path / "g.conf", port="not-a-port")
    assert_exit_2(capsys, "--config", str(conf), mentions=["port"])


def test_an_unknown_key_in_the_config_file_exits_2(capsys, tmp_path):
    conf = write_conf(tmp_path / "g.conf", colour="blue")
    assert_exit_2(capsys, "--config", str(conf), mentions=["colour"])


def test_a_bad_environment_value_exits_2(capsys):
    assert_exit_2(capsys, env={"GEOMYS_PORT": "many"}, mentions=["port"])


# -- the documented example file ---------------------------------------------------

def test_every_option_has_a_help_line_and_a_config_field():
    fields = set(config.Config.__dataclass_fields__)
    for option in config.OPTIONS:
        assert option.help, option.name
        assert option.name in fields, option.name


def test_the_parser_knows_every_option_and_every_spelling():
    help_text = config.build_parser(default_config_files=()).format_help()
    known = set(help_text.replace(",", " ").split())
    for option in config.OPTIONS:
        assert {"-" + option.name, "--" + option.name} <= known
        assert "--" + option.name.replace("_", "-") in known


def test_repo_geomys_conf_mentions_every_option():
    text = REPO_CONF.read_text()
    missing = [option.name for option in config.OPTIONS if option.name not in text]
    assert not missing, "geomys.conf does not document %s" % missing


def test_repo_geomys_conf_parses_with_config():
    cfg = load("--config", str(REPO_CONF))
    assert cfg.config_file == str(REPO_CONF)
    assert cfg.mode == "standalone"


# -- TLS options -------------------------------------------------------------------

TLS_FILES = ("--tls_cert_file", "node.crt", "--tls_key_file", "node.key")


def test_port_0_turns_plaintext_off_and_tls_port_takes_its_place_in_the_defaults():
    cfg = load("--port", "0", "--tls_port", "6390", *TLS_FILES)
    assert (cfg.port, cfg.tls_port, cfg.client_port) == (0, 6390, 6390)
    assert (cfg.node_id, cfg.grpc_port) == (6390, 7390)


def test_tls_options_default_to_off():
    cfg = load()
    assert (cfg.tls_port, cfg.tls_auth_clients, cfg.tls_cluster) == (None, "no", False)


@pytest.mark.parametrize("argv, mentions", [
    (["--port", "0"], ["tls_port"]),
    (["--tls_port", "6390"], ["tls_cert_file"]),
    (["--tls_port", "6390", "--tls_cert_file", "c"], ["tls_key_file"]),
    (["--tls_cluster", "yes", "--bootstrap", *TLS_FILES], ["tls_ca_file"]),
    (["--tls_auth_clients", "yes", *TLS_FILES, "--tls_ca_file", "ca"], ["tls_port"]),
    (["--tls_auth_clients", "optional", "--tls_port", "6390", *TLS_FILES], ["tls_ca_file"]),
    (["--tls_auth_clients", "sometimes"], ["tls_auth_clients"]),
    (["--tls_port", "6379", *TLS_FILES], ["tls_port"]),
    (["--tls_port", "7379", *TLS_FILES], ["grpc_port"]),
])
def test_tls_options_missing_what_they_need_exit_2(capsys, argv, mentions):
    assert_exit_2(capsys, *argv, mentions=mentions)


def test_tls_file_paths_expand_the_home_folder(isolated_home):
    cfg = load("--tls_port", "6390", "--tls_cert_file", "~/c.pem", "--tls_key_file", "~/k.pem",
               "--tls_ca_file", "~/ca.pem")
    assert (cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_ca_file) == tuple(
        str(isolated_home / name) for name in ("c.pem", "k.pem", "ca.pem"))


def test_protected_mode_counts_required_client_certificates_as_authentication_only_without_plaintext(capsys):
    tls_only = ("--tls_port", "6390", *TLS_FILES, "--tls_ca_file", "ca", "--tls_auth_clients", "yes")
    assert load("--host", "0.0.0.0", "--port", "0", *tls_only).host == "0.0.0.0"
    # The plaintext port would let a client in without any certificate.
    assert_exit_2(capsys, "--host", "0.0.0.0", *tls_only, mentions=["0.0.0.0", "requirepass"])
    # optional lets a client without a certificate in.
    assert_exit_2(capsys, "--host", "0.0.0.0", "--port", "0", *tls_only[:-1], "optional", mentions=["0.0.0.0"])


def test_protected_mode_counts_tls_cluster_as_peer_authentication(capsys):
    node = ("--host", "0.0.0.0", "--requirepass", "pw", "--bootstrap", *TLS_FILES, "--tls_ca_file", "ca")
    assert load(*node, "--tls_cluster", "yes").tls_cluster
    assert_exit_2(capsys, *node, mentions=["0.0.0.0", "cluster_secret", "tls_cluster"])


# -- --version and --help ----------------------------------------------------------

@pytest.mark.parametrize("flag", ["--version", "-version"])
def test_version_prints_the_version_and_exits_0(capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        load(flag)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "geomys %s" % geomys.__version__


def _help_of(parser, dest: str) -> str:
    return next(action.help for action in parser._actions if action.dest == dest)


def test_help_shows_exactly_one_default_per_option():
    parser = config.build_parser(default_config_files=())
    for option in config.OPTIONS:
        text = parser._get_formatter()._expand_help(
            next(action for action in parser._actions if action.dest == option.name))
        assert text.count("(default:") == 1, (option.name, text)
        assert "None" not in text, (option.name, text)


@pytest.mark.parametrize("name, shown", [
    ("node_id", "the client port"), ("grpc_port", "port + 1000, or tls_port + 1000 if port = 0"),
    ("advertise_host", "host"),
    ("port", "6379"), ("bootstrap", "no"), ("protected_mode", "yes"), ("join", "not set"),
])
def test_help_names_the_true_default(name, shown):
    assert _help_of(config.build_parser(default_config_files=()), name).endswith("(default: %s)" % shown)
