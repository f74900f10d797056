"""geomys-cli's pure parts: shell-like word splitting, words -> request, help, reply rendering, options."""

import pytest

from geomys.cli import UsageError, build_parser, commands, help_text, parse_words, render_reply, split_line
from geomys.commands import TABLE, CommandSpec
from geomys.commands.table import Field, build_table, to_key, to_seconds

COMMANDS = commands()


def required_count(spec: CommandSpec) -> int:
    return sum(1 for field in spec.fields if field.required)


def request_for(line: str) -> dict:
    return parse_words(split_line(line))


@pytest.mark.parametrize("line, expected", [
    ("set name john", {"command": "SET", "key": "name", "value": "john"}),
    ("set name john 1500", {"command": "SET", "key": "name", "value": "john", "exp": "1500"}),
    ("get name", {"command": "GET", "key": "name"}),
    ("incr hits", {"command": "INCR", "key": "hits"}),
    ("incr hits 5", {"command": "INCR", "key": "hits", "offset": "5"}),
    ("push queue job", {"command": "PUSH", "key": "queue", "value": "job"}),
    ("lpop queue", {"command": "LPOP", "key": "queue"}),
    ("rpop queue", {"command": "RPOP", "key": "queue"}),
    ("blpop queue 2.5", {"command": "BLPOP", "key": "queue", "timeout": "2.5"}),
    ("brpop queue 0", {"command": "BRPOP", "key": "queue", "timeout": "0"}),
    ("llen queue", {"command": "LLEN", "key": "queue"}),
    ("del name", {"command": "DEL", "key": "name"}),
    ("exists name", {"command": "EXISTS", "key": "name"}),
    ("flushdb", {"command": "FLUSHDB"}),
    ("info", {"command": "INFO"}),
    ("auth s3cret", {"command": "AUTH", "value": "s3cret"}),
    ("ping", {"command": "PING"}),
    ("echo hello", {"command": "ECHO", "message": "hello"}),
    ("compact", {"command": "COMPACT"}),
])
def test_each_command_maps_its_words_to_request_fields(line, expected):
    assert request_for(line) == expected


def test_every_command_of_the_server_table_has_cli_words():
    assert set(COMMANDS) == {"set", "get", "incr", "push", "lpop", "rpop", "blpop", "brpop", "llen",
                             "del", "exists", "flushdb", "info", "auth", "ping", "echo", "compact"}


@pytest.mark.parametrize("line", ["SET a b", "Set a b", "sEt a b"])
def test_command_words_are_case_insensitive(line):
    assert request_for(line) == {"command": "SET", "key": "a", "value": "b"}


def test_double_quotes_keep_spaces_in_one_word():
    assert request_for('set name "john doe"') == {"command": "SET", "key": "name", "value": "john doe"}


def test_single_quotes_keep_backslashes_and_double_quotes_literally():
    assert request_for(r"""echo 'a\b "c"'""") == {"command": "ECHO", "message": r'a\b "c"'}


def test_backslash_escapes_a_space_and_a_quote():
    assert request_for(r'set my\ key say\"hi\"') == {"command": "SET", "key": "my key", "value": 'say"hi"'}


def test_escaped_quote_inside_double_quotes_stays_a_quote():
    assert request_for(r'echo "she said \"hi\""') == {"command": "ECHO", "message": 'she said "hi"'}


def test_empty_quoted_word_is_an_empty_value():
    assert request_for('set k ""') == {"command": "SET", "key": "k", "value": ""}


def test_hash_is_an_ordinary_character_not_a_comment():
    assert request_for("set tag #1") == {"command": "SET", "key": "tag", "value": "#1"}


def test_blank_line_splits_into_no_words():
    assert split_line("   \t ") == []


@pytest.mark.parametrize("line", ['set name "john doe', "echo 'half", "echo trailing\\"])
def test_unclosed_quote_or_dangling_escape_is_a_parse_error(line):
    with pytest.raises(ValueError):
        split_line(line)


def test_numeric_words_are_sent_as_given_for_the_server_to_validate():
    assert request_for("incr n -3")["offset"] == "-3"
    assert request_for("set k v soon")["exp"] == "soon"


@pytest.mark.parametrize("name", sorted(name for name, spec in COMMANDS.items() if required_count(spec)))
def test_too_few_words_is_a_usage_error_naming_the_usage_line(name):
    usage = COMMANDS[name]
    words = [name] + ["w"] * (required_count(usage) - 1)
    with pytest.raises(UsageError) as info:
        parse_words(words)
    assert str(info.value) == "usage: " + usage.usage


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_too_many_words_is_a_usage_error_naming_the_usage_line(name):
    usage = COMMANDS[name]
    words = [name] + ["w"] * (len(usage.fields) + 1)
    with pytest.raises(UsageError) as info:
        parse_words(words)
    assert str(info.value) == "usage: " + usage.usage


def test_usage_lines_show_optional_words_in_brackets():
    assert COMMANDS["set"].usage == "set KEY VALUE [TTL_MS]"
    assert COMMANDS["incr"].usage == "incr KEY [OFFSET]"
    assert COMMANDS["blpop"].usage == "blpop KEY TIMEOUT"
    assert COMMANDS["auth"].usage == "auth PASSWORD"


def fake_hset(store, ctx, key, value, wait):
    """HSETX key value [wait] -> OK (a command of this test only)."""


def table_with_a_fake_command() -> dict:
    """A copy of the server's table plus one command declared the way every command is."""
    fake = CommandSpec("HSETX", fake_hset, (Field("key", to_key), Field("value", to_key, metavar="FIELD_VALUE"),
                                            Field("wait", to_seconds, False, metavar="SECONDS")),
                       frozenset(), "a command the CLI was never told about")
    return build_table({spec.name: spec for spec in TABLE.values()}.values(), (fake,))


def test_a_command_added_to_the_table_is_parsed_with_its_fields_and_optional_words():
    table = table_with_a_fake_command()
    assert parse_words(["hsetx", "k", "v"], table) == {"command": "HSETX", "key": "k", "value": "v"}
    assert parse_words(["HSetX", "k", "v", "2"], table) == {"command": "HSETX", "key": "k", "value": "v",
                                                            "wait": "2"}
    with pytest.raises(UsageError) as info:
        parse_words(["hsetx", "k"], table)
    assert str(info.value) == "usage: hsetx KEY FIELD_VALUE [SECONDS]"
    assert parse_words(["hsetx", "k", "v"]) == {"command": "hsetx"}   # the real table does not know it


def test_a_command_added_to_the_table_is_in_help_with_its_usage_and_summary():
    table = table_with_a_fake_command()
    assert help_text(["hsetx"], table) == "hsetx KEY FIELD_VALUE [SECONDS]  a command the CLI was never told about"
    listed = help_text([], table).splitlines()
    assert sum(line.startswith("hsetx KEY FIELD_VALUE [SECONDS] ") for line in listed) == 1
    assert len(listed) == len(help_text([]).splitlines()) + 1


def test_unknown_command_word_is_sent_alone_as_typed():
    assert parse_words(["xyz", "a", "b"]) == {"command": "xyz"}


def test_no_words_is_a_usage_error():
    with pytest.raises(UsageError):
        parse_words([])


def test_help_lists_every_command_with_its_usage_one_per_line():
    lines = help_text([]).splitlines()
    for usage in COMMANDS.values():
        assert sum(line.startswith(usage.usage + " ") for line in lines) == 1
    assert any(line.startswith("help [COMMAND]") for line in lines)
    assert any(line.startswith("quit") for line in lines)


def test_help_for_one_command_is_its_usage_line():
    assert help_text(["SET"]).split("  ")[0] == "set KEY VALUE [TTL_MS]"
    assert len(help_text(["set"]).splitlines()) == 1


def test_help_for_an_unknown_command_says_so():
    assert "no help for 'nope'" in help_text(["nope"])


@pytest.mark.parametrize("reply, shown", [
    ({"status": "OK"}, "Server: OK"),
    ({"status": "OK", "message": "PONG"}, "Server: PONG"),
    ({"status": "OK", "value": "john doe"}, "Server: john doe"),
    ({"status": "OK", "value": 42}, "Server: 42"),
    ({"status": "OK", "value": b"\x00\xff"}, "Server: b'\\x00\\xff'"),
    ({"status": "OK", "value": None}, "Server: (nil)"),
    ({"status": "OK", "value": "v", "message": "note"}, "Server: v"),
])
def test_replies_render_as_value_else_message_else_ok(reply, shown):
    assert render_reply(reply, "Server") == shown


def test_map_reply_renders_as_indented_key_value_lines_with_nested_maps_indented_further():
    reply = {"status": "OK", "value": {"role": "standalone", "persistence": {"mode": "none", "size": 0},
                                       "nodes": {}, "pair": ["a", 1]}}
    assert render_reply(reply, "Server").splitlines() == [
        "Server:",
        "  role: standalone",
        "  persistence:",
        "    mode: none",
        "    size: 0",
        "  nodes: {}",
        "  pair: [a, 1]",
    ]


def test_unlabelled_rendering_is_the_bare_value_for_one_shot_mode():
    assert render_reply({"status": "OK", "value": "john doe"}) == "john doe"
    assert render_reply({"status": "OK", "value": {"a": {"b": 1}}}).splitlines() == ["a:", "  b: 1"]


@pytest.mark.parametrize("argv", [
    ["-port", "6767"], ["-port=6767"], ["--port", "6767"], ["--port=6767"], ["-p", "6767"],
])
def test_port_option_accepts_single_and_double_dash_spellings(argv):
    args = build_parser().parse_args(argv)
    assert args.port == 6767 and args.words == []


def test_options_default_to_loopback_and_6379_without_password():
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.password, args.words) == ("127.0.0.1", 6379, None, [])


@pytest.mark.parametrize("argv", [["-a", "pw"], ["-password", "pw"], ["--password=pw"]])
def test_password_option_has_short_seed_and_long_spellings(argv):
    assert build_parser().parse_args(argv).password == "pw"


def test_words_after_the_command_are_kept_even_when_they_look_like_options():
    args = build_parser().parse_args(["-host", "localhost", "echo", "--port"])
    assert args.host == "localhost" and args.words == ["echo", "--port"]


def test_consistent_adds_the_field_to_reads_only():
    assert parse_words(["get", "k"], consistent=True) == {"command": "GET", "key": "k", "consistent": True}
    assert parse_words(["exists", "k"], consistent=True)["consistent"] is True
    assert "consistent" not in parse_words(["set", "k", "v"], consistent=True)
    assert "consistent" not in parse_words(["get", "k"])


@pytest.mark.parametrize("argv", [["--consistent"], ["-consistent"]])
def test_consistent_option_has_both_spellings_and_defaults_to_the_servers_choice(argv):
    assert build_parser().parse_args(argv).consistent is True
    assert build_parser().parse_args([]).consistent is None
