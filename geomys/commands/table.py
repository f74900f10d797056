"""The command table: every command declared once, as data.

A `CommandSpec` names the handler, the request fields it takes (each with a
converter that parses at the table edge and raises the matching error), and
flags the engine routes by. Handlers receive typed values. Pure: imports
only errors, store and the command modules.
"""

from dataclasses import dataclass, field as dataclass_field
from typing import Any, Callable, Optional

from ..errors import BadRequest

# Flags: what the engine needs to know to route, log and lock a command.
WRITE = "write"        # changes the keyspace: logged, replicated, forwarded by followers
BLOCKING = "blocking"  # may wait for data; handler returns None to mean "wait"
NOLOCK = "nolock"      # does not touch the keyspace; runs without the store lock
NOAUTH = "noauth"      # allowed before AUTH when requirepass is set
DENYOOM = "denyoom"    # may add data: refused with OOM once max_memory is reached; a write too

# The request field a read (GET, LLEN, EXISTS) sets to true to be linearizable
# on a cluster (docs/cluster.md); other commands ignore it.
CONSISTENT = "consistent"

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

OK = {"status": "OK"}  # shared reply; never mutated


def reply(**fields) -> dict:
    """Build a success reply carrying `fields` (value and/or message)."""
    return {"status": "OK", **fields}


# -- argument converters ------------------------------------------------------
# Each takes the raw field value and the field name, returns the typed value
# or raises BadRequest naming the field.

def to_str(raw, field: str):
    """A string field: str or bin as given; an int or float becomes its decimal text."""
    kind = type(raw)
    if kind is str or kind is bytes:
        return raw
    if kind is int or kind is float:
        return repr(raw)
    raise BadRequest("field '%s' must be a string, got %s" % (field, _type_name(raw)))


def to_key(raw, field: str):
    """A key: like a string field, but bin that is valid UTF-8 names the same key as the str."""
    kind = type(raw)
    if kind is str:
        return raw
    if kind is bytes:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return to_str(raw, field)


def to_int(raw, field: str) -> int:
    """An integer field: int, or a decimal string such as '12' or '-3'."""
    kind = type(raw)
    if kind is int:
        return raw
    if kind is str or kind is bytes:
        text = raw.strip() if kind is str else raw.strip().decode("ascii", "replace")
        if text and (text.isdigit() or (text[0] in "+-" and text[1:].isdigit())) and text.isascii():
            return int(text)
    raise BadRequest("field '%s' must be an integer, got %s" % (field, _describe(raw)))


def to_offset(raw, field: str) -> int:
    """INCR's offset: an integer from 0 to 2**63-1 (counters only increase)."""
    value = to_int(raw, field)
    if value < 0:
        raise BadRequest("field '%s' must not be negative: counters only increase" % field)
    if value > INT64_MAX:
        raise BadRequest("field '%s' is beyond the signed 64-bit range" % field)
    return value


def to_ttl_ms(raw, field: str) -> int:
    """A TTL in milliseconds: a positive integer."""
    value = to_int(raw, field)
    if value <= 0:
        raise BadRequest("field '%s' must be a positive number of milliseconds" % field)
    if value > INT64_MAX:
        raise BadRequest("field '%s' is too large" % field)
    return value


def to_seconds(raw, field: str) -> float:
    """A timeout in seconds: a non-negative int, float or decimal string (0 waits forever)."""
    kind = type(raw)
    if kind is str or kind is bytes:
        try:
            raw = float(raw)
        except ValueError:
            raise BadRequest("field '%s' must be a number of seconds, got %s" % (field, _describe(raw))) from None
    elif kind is not int and kind is not float:
        raise BadRequest("field '%s' must be a number of seconds, got %s" % (field, _type_name(raw)))
    if not raw >= 0 or raw == float("inf"):
        raise BadRequest("field '%s' must be a finite number of seconds, 0 or more" % field)
    return float(raw)


# Converters that return a str unchanged. parse hands a str straight to the
# handler for their fields instead of calling them: keys and values sent as
# str are the common case, and a call per field is a good part of parsing.
KEEPS_STR = (to_str, to_key)


def _type_name(raw) -> str:
    return {type(None): "nil", bool: "a boolean", list: "an array", dict: "a map"}.get(
        type(raw), type(raw).__name__)


def _describe(raw) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the table ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Field:
    """One request field a command takes; `metavar` names it in usage lines (default: NAME)."""

    name: str
    convert: Callable[[Any, str], Any]
    required: bool = True
    default: Any = None
    metavar: str = ""

    @property
    def word(self) -> str:
        """How a usage line shows this field, e.g. KEY or [TTL_MS]."""
        word = self.metavar or self.name.upper()
        return word if self.required else "[%s]" % word


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command: its name, handler, fields, flags and a one-line summary for help.

    The flags are also kept as booleans, so routing a request costs a few
    attribute reads. geomys-cli builds its words and help from the same spec.
    """

    name: str
    handler: Callable
    fields: tuple = ()
    flags: frozenset = frozenset()
    summary: str = ""
    is_write: bool = dataclass_field(init=False, repr=False, compare=False)
    is_blocking: bool = dataclass_field(init=False, repr=False, compare=False)
    needs_lock: bool = dataclass_field(init=False, repr=False, compare=False)
    needs_auth: bool = dataclass_field(init=False, repr=False, compare=False)
    is_plain: bool = dataclass_field(init=False, repr=False, compare=False)
    denies_oom: bool = dataclass_field(init=False, repr=False, compare=False)
    is_read: bool = dataclass_field(init=False, repr=False, compare=False)
    parse: Callable[[dict, Any, Any], tuple] = dataclass_field(init=False, repr=False, compare=False)
    parse_source: str = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: computed once here
        set_(self, "is_write", WRITE in self.flags)
        set_(self, "is_blocking", BLOCKING in self.flags)
        set_(self, "needs_lock", NOLOCK not in self.flags)
        set_(self, "needs_auth", NOAUTH not in self.flags)
        # Runs under the store lock and never waits: may share a hold of the lock with others.
        set_(self, "is_plain", self.needs_lock and not self.is_blocking)
        set_(self, "denies_oom", DENYOOM in self.flags)
        if self.denies_oom and not self.is_write:
            # The engine looks for OOM only among writes (Engine._run_locked).
            raise ValueError("%s: a command flagged %s must be flagged %s too" % (self.name, DENYOOM, WRITE))
        # Reads the keyspace without changing it: may ask to be linearizable.
        set_(self, "is_read", NOLOCK not in self.flags and WRITE not in self.flags)
        parse, source = compile_parser(self)
        set_(self, "parse", parse)
        set_(self, "parse_source", source)

    @property
    def usage(self) -> str:
        """The usage line geomys-cli shows, e.g. `set KEY VALUE [TTL_MS]`."""
        return " ".join([self.name.lower()] + [field.word for field in self.fields])


def compile_parser(spec: CommandSpec) -> tuple[Callable[[dict, Any, Any], tuple], str]:
    """Write the spec's parse function from its fields; return it and its source.

    `parse(request, store, ctx)` converts the request map's fields and
    returns the handler's whole argument tuple, `(store, ctx, <one value
    per field>)`, so the engine calls `spec.handler(*args)` without building
    another. A field that is missing or nil takes its default, or is a
    BadRequest naming it when required; a value of the wrong kind is a
    BadRequest naming it. A read's CONSISTENT field is checked too but is
    not an argument: the engine acts on it.

    parse runs for every request, and a loop over the fields would cost
    several times the checks themselves. So, as dataclasses and namedtuple
    do, the table writes the checks out once, at import, as straight-line
    code: a str in a key or string field is taken as it is, anything else
    goes to the field's reader (its converter, with the default and the
    required check). Only the declared field names reach the source, as
    string literals; the variables are numbered, so no field name can
    clash with them. `spec.parse_source` holds the source for a reader.
    """
    namespace: dict = {"bad_consistent": _bad_consistent}
    lines = ["def parse(request, store, ctx):"]
    if spec.is_read:
        lines += ["    if %r in request:" % CONSISTENT,
                  "        consistent = request[%r]" % CONSISTENT,
                  "        if consistent is not None and consistent is not True and consistent is not False:",
                  "            bad_consistent(consistent)"]
    values = []
    for i, field in enumerate(spec.fields):
        value, read = "value%d" % i, "read%d" % i
        namespace[read] = _field_reader(spec.name, field)
        lines.append("    %s = request.get(%r)" % (value, field.name))  # a method call: no bound method made
        if field.convert in KEEPS_STR:
            lines += ["    if type(%s) is not str:" % value, "        %s = %s(%s)" % (value, read, value)]
        elif field.required or field.default is not None:
            lines.append("    %s = %s(%s)" % (value, read, value))
        else:
            lines += ["    if %s is not None:" % value, "        %s = %s(%s)" % (value, read, value)]
        values.append(value)
    lines.append("    return (%s)" % ", ".join(["store", "ctx"] + values))
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<parse %s>" % spec.name, "exec"), namespace)
    return namespace["parse"], source


def _field_reader(command: str, field: Field) -> Callable[[Any], Any]:
    """One field's conversion, nil included: its default, or BadRequest when it is required."""
    name, convert, required, default = field.name, field.convert, field.required, field.default

    def read(raw):
        if raw is None:
            if required:
                raise BadRequest("%s needs the field '%s'" % (command, name))
            return default
        return convert(raw, name)
    return read


def _bad_consistent(raw) -> None:
    raise BadRequest("field '%s' must be a boolean (true or false), got %s" % (CONSISTENT, _describe(raw)))


def build_table(*spec_groups) -> dict[str, CommandSpec]:
    """Merge the modules' SPECS into one name -> spec dict, refusing duplicates.

    Each command is entered under its upper- and lower-case name so the common
    spellings are found with one dict lookup.
    """
    table: dict[str, CommandSpec] = {}
    for group in spec_groups:
        for spec in group:
            if spec.name in table:
                raise ValueError("command %s is declared twice" % spec.name)
            table[spec.name] = spec
    for spec in list(table.values()):
        table[spec.name.lower()] = spec
    return table


def lookup(table: dict, name) -> Optional[CommandSpec]:
    """Find the spec for a command name in any letter case; None if unknown or not a str."""
    if type(name) is not str:  # also keeps unhashable names (a list, a map) out of dict.get
        return None
    spec = table.get(name)
    if spec is None:
        spec = table.get(name.upper())
    return spec

