"""The command table as data: every command of docs/protocol.md is declared once, with a
documented handler, sane flags and fields; and the argument converters.
"""

import inspect

import pytest

from geomys.commands import TABLE, lookup
from geomys.commands.table import (BLOCKING, DENYOOM, NOAUTH, NOLOCK, WRITE, CommandSpec, build_table, to_int,
                                   to_key, to_offset, to_seconds, to_str, to_ttl_ms)
from geomys.errors import BadRequest

DOCUMENTED_COMMANDS = {"PING", "ECHO", "SET", "GET", "INCR", "PUSH", "LPOP", "RPOP", "BLPOP", "BRPOP", "LLEN",
                 "DEL", "EXISTS", "FLUSHDB", "INFO", "AUTH", "COMPACT"}
WRITES = {"SET", "INCR", "PUSH", "LPOP", "RPOP", "BLPOP", "BRPOP", "DEL", "FLUSHDB"}
DOCUMENTED_FIELDS = {"key", "value", "message", "offset", "exp", "timeout"}

SPECS = sorted({spec.name: spec for spec in TABLE.values()}.values(), key=lambda s: s.name)


def spec_id(spec):
    return spec.name


def test_every_documented_command_is_in_the_table():
    assert DOCUMENTED_COMMANDS <= {spec.name for spec in SPECS}


def test_each_command_is_found_by_its_upper_and_lower_case_name():
    for spec in SPECS:
        assert TABLE[spec.name] is spec and TABLE[spec.name.lower()] is spec


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_every_handler_has_a_docstring_whose_first_line_is_its_usage(spec):
    doc = inspect.getdoc(spec.handler)
    assert doc, "%s's handler has no docstring" % spec.name
    assert doc.splitlines()[0].startswith(spec.name), doc


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_every_spec_has_a_summary_and_a_usage_line_of_its_fields(spec):
    assert spec.summary and not spec.summary.lower().startswith(spec.name.lower() + " ")
    words = spec.usage.split()
    assert words[0] == spec.name.lower() and len(words) == 1 + len(spec.fields)
    assert [word.startswith("[") for word in words[1:]] == [not field.required for field in spec.fields]


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_handlers_take_the_store_the_context_and_one_argument_per_field(spec):
    params = list(inspect.signature(spec.handler).parameters)
    assert params[:2] == ["store", "ctx"]
    assert len(params) == 2 + len(spec.fields)


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_fields_are_documented_fields_with_converters_and_required_ones_first(spec):
    names = [field.name for field in spec.fields]
    assert len(names) == len(set(names))
    assert set(names) <= DOCUMENTED_FIELDS
    assert all(callable(field.convert) for field in spec.fields)
    required = [field.required for field in spec.fields]
    assert required == sorted(required, reverse=True)


def test_commands_that_change_the_keyspace_are_writes():
    flagged = {spec.name for spec in SPECS if WRITE in spec.flags}
    assert WRITES <= flagged
    assert not flagged & {"GET", "LLEN", "EXISTS", "PING", "ECHO", "INFO", "AUTH"}


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_flags_are_consistent(spec):
    assert spec.flags <= {WRITE, BLOCKING, NOLOCK, NOAUTH, DENYOOM}
    assert spec.is_write == (WRITE in spec.flags)
    assert spec.denies_oom == (DENYOOM in spec.flags)
    if DENYOOM in spec.flags:
        assert WRITE in spec.flags and BLOCKING not in spec.flags
    if BLOCKING in spec.flags:
        assert WRITE in spec.flags and NOLOCK not in spec.flags
        assert [f.name for f in spec.fields][0] == "key" and spec.fields[-1].name == "timeout"
    if NOLOCK in spec.flags:
        assert WRITE not in spec.flags


def test_only_ping_and_auth_are_allowed_before_auth():
    assert {spec.name for spec in SPECS if NOAUTH in spec.flags} == {"PING", "AUTH"}


def test_only_the_commands_that_add_data_are_refused_when_memory_is_full():
    # Everything that frees memory (DEL, the pops, FLUSHDB) or reads stays allowed.
    assert {spec.name for spec in SPECS if DENYOOM in spec.flags} == {"SET", "INCR", "PUSH"}


def test_a_command_that_adds_data_must_be_a_write():
    # The engine looks for OOM only among writes.
    with pytest.raises(ValueError, match="denyoom"):
        CommandSpec("GROW", lambda store, ctx: None, flags=frozenset({DENYOOM}))


def test_only_the_blocking_pops_block():
    assert {spec.name for spec in SPECS if BLOCKING in spec.flags} == {"BLPOP", "BRPOP"}


def test_build_table_refuses_a_command_declared_twice():
    one = CommandSpec("X", lambda store, ctx: None)
    with pytest.raises(ValueError, match="X"):
        build_table((one,), (CommandSpec("X", lambda store, ctx: None),))


@pytest.mark.parametrize("name", ["ping", "PING", "Ping", "pInG"])
def test_lookup_finds_a_command_in_any_letter_case(name):
    assert lookup(TABLE, name).name == "PING"


@pytest.mark.parametrize("name", ["NOPE", "", None, 5, b"PING", ["PING"], {"a": 1}])
def test_lookup_of_an_unknown_or_non_string_name_is_none(name):
    assert lookup(TABLE, name) is None


# -- converters ---------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [(7, 7), (-3, -3), ("12", 12), ("-3", -3), ("+4", 4), (b"5", 5)])
def test_to_int_accepts_ints_and_decimal_strings(raw, expected):
    assert to_int(raw, "n") == expected


@pytest.mark.parametrize("raw", ["1.5", 1.5, "abc", "", "-", "1e3", True, None, [1], "\uff11\uff12"])
def test_to_int_refuses_anything_else_naming_the_field(raw):
    with pytest.raises(BadRequest, match="'n'"):
        to_int(raw, "n")


@pytest.mark.parametrize("raw", [-1, 2**63])
def test_to_offset_refuses_negative_and_beyond_64_bit(raw):
    with pytest.raises(BadRequest, match="'offset'"):
        to_offset(raw, "offset")


@pytest.mark.parametrize("raw", [0, -1, 2**63])
def test_to_ttl_ms_refuses_zero_negative_and_huge(raw):
    with pytest.raises(BadRequest, match="'exp'"):
        to_ttl_ms(raw, "exp")


@pytest.mark.parametrize("raw, expected", [(0, 0.0), (2, 2.0), (0.25, 0.25), ("1.5", 1.5), (b"3", 3.0)])
def test_to_seconds_accepts_non_negative_numbers(raw, expected):
    assert to_seconds(raw, "timeout") == expected


@pytest.mark.parametrize("raw", [-0.1, "-1", float("inf"), float("nan"), "nan", "x", True, None, [1]])
def test_to_seconds_refuses_negative_infinite_and_non_numbers(raw):
    with pytest.raises(BadRequest, match="'timeout'"):
        to_seconds(raw, "timeout")


def test_to_key_turns_utf8_bin_into_str_and_keeps_other_bin():
    assert to_key("k", "key") == "k"
    assert to_key("\u00e9".encode(), "key") == "\u00e9"
    assert to_key(b"\xff", "key") == b"\xff"


def test_to_str_keeps_str_and_bin_as_given():
    assert to_str("s", "value") == "s"
    assert to_str(b"\xff", "value") == b"\xff"


@pytest.mark.parametrize("raw", [None, True, [1], {"a": 1}])
def test_to_str_refuses_non_strings_naming_the_field(raw):
    with pytest.raises(BadRequest, match="'value'"):
        to_str(raw, "value")
