"""geomys-cli: run one command and exit, or a `>> ` REPL against a Geomys server.

Words are split like a shell (shlex) and mapped to a request by the server's
own command table (geomys.commands.TABLE): each spec's fields give the words a
command takes and its summary the help line, so a command declared there is
usable here with nothing else to add. A word the table does not know is sent
alone as {'command': WORD} (other words dropped).
"""

import argparse
import os
import shlex
import sys
from typing import Any, Mapping, Optional, TextIO

from .client import DEFAULT_HOST, DEFAULT_PORT, Client, GeomysConnectionError
from .commands import TABLE, CommandSpec, lookup
from .commands.table import CONSISTENT
from .errors import GeomysError
from .tls import TlsError

PROMPT = ">> "
HISTORY_FILE = "~/.geomys/cli_history"
HISTORY_LENGTH = 1000
CONNECT_TIMEOUT = 5.0
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Words the CLI handles itself: usage line and summary.
LOCAL_COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("help [COMMAND]", "list the commands, or show one"),
    "quit": ("quit", "leave (also exit, or Ctrl-D)"),
    "exit": ("exit", "leave (also quit, or Ctrl-D)"),
}


class UsageError(ValueError):
    """A command line that cannot become a request; the message is the usage to show."""


def commands(table: Mapping[str, CommandSpec] = TABLE) -> dict[str, CommandSpec]:
    """Every command of `table` once, by lower-case command word, in declaration order."""
    return {spec.name.lower(): spec for spec in table.values()}


def split_line(line: str) -> list[str]:
    """Split a REPL line into words like a POSIX shell; ValueError on an unclosed quote."""
    return shlex.split(line)


def parse_words(words: list[str], table: Mapping[str, CommandSpec] = TABLE,
                consistent: Optional[bool] = None) -> dict:
    """Turn a command's words into its request map, or raise UsageError (nothing is sent).

    The words fill the spec's fields in order, required ones first. Numeric
    words (TTL_MS, OFFSET, TIMEOUT) are sent as given: the server accepts
    decimal strings and owns the validation. A read gets the 'consistent'
    field when `consistent` is not None (--consistent).
    """
    if not words:
        raise UsageError("empty command")
    spec = lookup(table, words[0])
    if spec is None:
        return {"command": words[0]}
    given = words[1:]
    required = sum(1 for field in spec.fields if field.required)
    if not required <= len(given) <= len(spec.fields):
        raise UsageError("usage: " + spec.usage)
    request = {"command": spec.name}
    for field, word in zip(spec.fields, given):
        request[field.name] = word
    if consistent is not None and spec.is_read:
        request[CONSISTENT] = consistent
    return request


def help_text(words: list[str], table: Mapping[str, CommandSpec] = TABLE) -> str:
    """The `help` output: every command on one line, or just the one asked for."""
    specs = commands(table)
    lines = [(spec.usage, spec.summary) for spec in specs.values()] + list(LOCAL_COMMANDS.values())
    if words:
        name = words[0].lower()
        if name in specs:
            lines = [(specs[name].usage, specs[name].summary)]
        elif name in LOCAL_COMMANDS:
            lines = [LOCAL_COMMANDS[name]]
        else:
            return "no help for %r; type help to list the commands" % words[0]
    width = max(len(usage) for usage, _ in lines)
    return "\n".join("%s  %s" % (usage.ljust(width), summary) for usage, summary in lines)


def format_scalar(value: Any) -> str:
    """Render one reply value on one line: bin as a bytes literal, nil as (nil)."""
    if value is None:
        return "(nil)"
    if isinstance(value, bytes):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(format_scalar(item) for item in value)
    if isinstance(value, dict):
        return "{%s}" % ", ".join("%s: %s" % (format_scalar(k), format_scalar(v)) for k, v in value.items())
    return str(value)


def format_map(mapping: dict, indent: int = 0) -> list[str]:
    """Render a map (INFO) as `key: value` lines, nested maps indented by two more spaces."""
    pad = " " * indent
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            lines.append("%s%s:" % (pad, format_scalar(key)))
            lines.extend(format_map(value, indent + 2))
        else:
            lines.append("%s%s: %s" % (pad, format_scalar(key), format_scalar(value)))
    return lines


def render_reply(reply: dict, label: str = "") -> str:
    """Show an OK reply: its value, else its message, else OK, after `label: ` if given.

    A map value (INFO) becomes one `key: value` line per key, below the label
    and indented under it.
    """
    value = reply.get("value")
    if isinstance(value, dict) and value:
        lines = format_map(value)
        return "\n".join([label + ":"] + ["  " + line for line in lines]) if label else "\n".join(lines)
    if "value" in reply:
        text = format_scalar(value)
    elif "message" in reply:
        text = format_scalar(reply["message"])
    else:
        text = "OK"
    return "%s: %s" % (label, text) if label else text


def run_request(client: Client, request: dict) -> tuple[Optional[dict], str]:
    """Send one request; return (reply, "") or (None, the server's or the connection's error message)."""
    try:
        return client.execute(**request), ""
    except GeomysError as exc:
        return None, exc.message
    except GeomysConnectionError as exc:
        return None, str(exc)


def _say(text: str, stream: Optional[TextIO] = None) -> None:
    # Flushed at once: a program driving the REPL through a pipe reads replies as they come.
    print(text, file=stream or sys.stdout, flush=True)


def run_line(client: Client, line: str) -> bool:
    """Run one REPL line and print its outcome; return False when the user asked to leave."""
    try:
        words = split_line(line)
    except ValueError as exc:
        _say("Error: cannot parse the line: %s" % exc)
        return True
    if not words:
        return True
    name = words[0].lower()
    if name in ("quit", "exit"):
        return False
    if name == "help":
        _say(help_text(words[1:]))
        return True
    try:
        request = parse_words(words, consistent=client.consistent)
    except UsageError as exc:
        _say("Error: %s" % exc)
        return True
    reply, error = run_request(client, request)
    _say(render_reply(reply, "Server") if reply is not None else "Server Error: " + error)
    return True


def repl(client: Client, interactive: bool) -> int:
    """Read lines until EOF, quit or exit. With a terminal: prompt, line editing and history.

    Without one (commands piped in) no prompt is printed, so the output is
    exactly one result per command line.
    """
    readline = _load_history() if interactive else None
    try:
        while True:
            try:
                line = input(PROMPT if interactive else "")
            except EOFError:
                if interactive:
                    _say("")
                return EXIT_OK
            except KeyboardInterrupt:
                _say("")  # Ctrl-C drops the line being typed, as in a shell
                continue
            try:
                if not run_line(client, line):
                    return EXIT_OK
            except KeyboardInterrupt:
                # The client dropped the connection, so a late reply cannot be misread.
                _say("(interrupted)")
    finally:
        if readline is not None:
            _save_history(readline)


def run_once(client: Client, words: list[str]) -> int:
    """Run the command given on the command line: result on stdout, errors on stderr."""
    name = words[0].lower()
    if name == "help":
        _say(help_text(words[1:]))
        return EXIT_OK
    if name in ("quit", "exit"):
        return EXIT_OK
    try:
        request = parse_words(words, consistent=client.consistent)
    except UsageError as exc:
        _say("geomys-cli: %s" % exc, sys.stderr)
        return EXIT_USAGE
    reply, error = run_request(client, request)
    if reply is None:
        _say("Server Error: " + error, sys.stderr)
        return EXIT_ERROR
    _say(render_reply(reply))
    return EXIT_OK


def _load_history():
    """Enable line editing and load the history file; None where readline is unavailable."""
    try:
        import readline
    except ImportError:
        return None
    path = os.path.expanduser(HISTORY_FILE)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(HISTORY_LENGTH)
    return readline


def _save_history(readline) -> None:
    """Write the history file; a failure only costs the history."""
    try:
        readline.write_history_file(os.path.expanduser(HISTORY_FILE))
    except OSError:
        pass


def build_parser() -> argparse.ArgumentParser:
    """The option parser: single-dash (`-port 6767`, `-port=6767`) and double-dash spellings."""
    parser = argparse.ArgumentParser(
        prog="geomys-cli", allow_abbrev=False,
        description="Run one Geomys command, or without one, an interactive prompt.",
        epilog="Commands: " + ", ".join(commands()) + ". Type help at the prompt for their usage.")
    parser.add_argument("-host", "--host", default=DEFAULT_HOST, help="server address (default: %(default)s)")
    parser.add_argument("-port", "--port", "-p", type=int, default=DEFAULT_PORT,
                        help="server port (default: %(default)s)")
    parser.add_argument("-a", "-password", "--password", default=None,
                        help="send AUTH with this password on connecting")
    parser.add_argument("--tls", "-tls", action="store_true", help="connect over TLS (the server's tls_port)")
    parser.add_argument("--cacert", "-cacert", metavar="FILE",
                        help="CA certificate (PEM) the server's must chain to (default: the system's CAs)")
    parser.add_argument("--cert", "-cert", metavar="FILE", help="client certificate (PEM), for tls_auth_clients")
    parser.add_argument("--key", "-key", metavar="FILE", help="private key of --cert (PEM)")
    parser.add_argument("--consistent", "-consistent", action="store_const", const=True, default=None,
                        help="linearizable reads: GET, LLEN and EXISTS on a cluster node first confirm the "
                             "leader's commit point (docs/cluster.md); default: the server's read_consistency")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND ARGS",
                        help="a command to run once, e.g. set name 'john doe'")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `geomys-cli`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.tls and (args.cacert or args.cert or args.key):
        parser.error("--cacert, --cert and --key need --tls")
    try:
        client = Client(args.host, args.port, password=args.password, connect_timeout=CONNECT_TIMEOUT,
                        ssl=args.tls, ssl_ca_certs=args.cacert, ssl_certfile=args.cert, ssl_keyfile=args.key,
                        consistent=args.consistent)
    except TlsError as exc:
        parser.error(str(exc))
    try:
        with client:
            if args.words:
                return run_once(client, args.words)
            return repl(client, sys.stdin.isatty())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK  # the reader of our output left (geomys-cli info | head)


if __name__ == "__main__":
    sys.exit(main())
