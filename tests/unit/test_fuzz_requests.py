"""Fuzzing the request path below the socket: the streaming decoder and command validation.

Hypothesis feeds arbitrary bytes, hostile MessagePack encodings (deep nesting,
huge declared lengths, container map keys) and arbitrary values to the
decoder the server reads with (`protocol.new_unpacker`), and request maps
carrying every MessagePack type in every field to `Engine.execute` over a
real Store and a fake clock. The decoder may only yield values or raise one
of `protocol.DECODE_ERRORS` (which net.py answers with BAD_REQUEST and a
close); every reply must be an OK map or an error with a declared code other
than INTERNAL, which is what an unexpected exception turns into.
"""

import math

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from geomys import protocol
from geomys.commands import TABLE, lookup
from geomys.errors import BY_CODE, GeomysError
from tests.fakes import FakeClock, Harness, store_state

# Small, so that declared lengths above it are common and any allocation a
# header could cause stays small; the refusal logic is the same at 64 MiB.
LIMIT = 1 << 20

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- MessagePack values -------------------------------------------------------------

KEYS_IN_STORE = ["s", "c", "l", "t"]
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=10)
    | st.binary(max_size=10) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.sampled_from(KEYS_IN_STORE + ["0", "1", "-1", " 7", "+3", "1e3", "nan", "inf", "-0.0", "9" * 25,
                                       "\u0661", "9223372036854775807", b"1", b"\xff"])
)
HASHABLE = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5) | st.binary(max_size=5)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HASHABLE, inner, max_size=3),
                      max_leaves=8)

# -- requests ------------------------------------------------------------------------

NAMES = sorted({spec.name for spec in TABLE.values()})
COMMAND = st.sampled_from(NAMES) | st.sampled_from(NAMES).map(str.lower) | st.sampled_from(NAMES).map(str.title)
# Three times in four a field holds something of the right kind, so that
# requests get past validation into the handlers (WRONG_TYPE, OVERFLOW, TIMEOUT...).
PLAUSIBLE = {
    "key": st.sampled_from(KEYS_IN_STORE + ["l", "new", b"s", b"\xff"]),
    "value": st.sampled_from(["1", "-9223372036854775808", "text", b"\x00", 7, 1.5]),
    "message": st.text(max_size=5),
    "offset": st.integers(0, 2**63 - 1) | st.sampled_from(["1", "9223372036854775807", -1, 2**63]),
    "exp": st.integers(1, 2000) | st.sampled_from(["100", 0, 2**63]),
    "timeout": st.floats(0.001, 5) | st.sampled_from([1, "0.5", -1, float("nan"), float("inf")]),
}
FIELD = {name: st.one_of(plausible, plausible, plausible, VALUES) for name, plausible in PLAUSIBLE.items()}
REQUESTS = st.builds(
    lambda extra, known: {**extra, **known},
    st.dictionaries(HASHABLE, VALUES, max_size=2),
    st.fixed_dictionaries({"command": st.one_of(COMMAND, COMMAND, COMMAND, VALUES),
                           "key": FIELD["key"], "value": FIELD["value"], "timeout": FIELD["timeout"]},
                          optional={name: FIELD[name] for name in ("message", "offset", "exp")}),
)


class TimeRunsOutClock(FakeClock):
    """A FakeClock on which every blocking pop's deadline has passed when the engine checks it.

    `arm` is the context's before_block hook: the engine calls it just before a
    pop may wait, then reads monotonic() once to set the deadline and again to
    check it. The first read gives the current time, every later one +inf, so
    any finite timeout runs out at once instead of stalling the test.
    """

    def __init__(self) -> None:
        super().__init__()
        self._armed_reads = None

    def arm(self) -> None:
        self._armed_reads = 0

    def monotonic(self) -> float:
        if self._armed_reads is None:
            return super().monotonic()
        self._armed_reads += 1
        return super().monotonic() if self._armed_reads == 1 else math.inf


def fuzz_harness(requirepass):
    """A Harness on a TimeRunsOutClock holding a string, a counter one below the limit, a list and a TTL key."""
    h = Harness(requirepass=requirepass)
    h.clock = h.engine.clock = TimeRunsOutClock()
    h.ctx.before_block = h.clock.arm
    h.ctx.authenticated = True
    for command, fields in [("SET", {"key": "s", "value": "text"}),
                            ("SET", {"key": "c", "value": "9223372036854775806"}),
                            ("PUSH", {"key": "l", "value": "x"}),
                            ("PUSH", {"key": "l", "value": "y"}),
                            ("SET", {"key": "t", "value": "soon", "exp": 500})]:
        h.ok(command, **fields)
    h.ctx.authenticated = requirepass is None
    return h


def waits_forever(request) -> bool:
    """Tell whether `request` is a valid blocking pop with timeout 0, the one wait no clock can end."""
    spec = lookup(TABLE, request.get("command")) if type(request) is dict else None
    if spec is None or not spec.is_blocking:
        return False
    try:
        return spec.parse(request, None, None)[-1] == 0
    except GeomysError:
        return False


def live_state(h: Harness) -> dict:
    """Every key whose TTL has not passed, as plain data (what a client can observe)."""
    now = h.clock.wall_ms()
    return {k: v for k, v in store_state(h.store).items() if v[1] is None or v[1] > now}


def assert_well_formed(reply) -> None:
    """A reply is an OK map or an error map with a declared, non-INTERNAL code, and it packs."""
    assert type(reply) is dict and reply.get("status") in ("OK", "ERROR"), reply
    if reply["status"] == "ERROR":
        assert reply.get("code") in BY_CODE and reply["code"] != "INTERNAL", reply
        assert isinstance(reply.get("message"), str) and reply["message"], reply
    # net.py packs replies inside the handler that treats ValueError/TypeError
    # as undecodable input: a reply that cannot be packed would close the connection.
    assert msgpack.unpackb(protocol.new_packer().pack(reply), raw=False, strict_map_key=False) == reply


def execute_all(h: Harness, requests) -> None:
    """Run each request; check its reply, and that an error or a read changed nothing a client sees."""
    for request in requests:
        before = live_state(h)
        reply = h.engine.execute(request, h.ctx)
        assert_well_formed(reply)
        spec = lookup(TABLE, request.get("command")) if type(request) is dict else None
        if reply["status"] == "ERROR" or (spec is not None and not spec.is_write):
            assert live_state(h) == before, (request, reply)


@FUZZ
@given(st.lists(REQUESTS, min_size=1, max_size=6), st.sampled_from([None, None, None, "pw"]),
       st.sampled_from([0, 0.2, 1]))
def test_every_request_gets_ok_or_a_declared_error_and_errors_and_reads_change_nothing(requests, requirepass, step):
    # Decoded as the server would see them: tuples become lists, and so on.
    requests = [msgpack.unpackb(msgpack.packb(r, use_bin_type=True), raw=False, strict_map_key=False)
                for r in requests]
    assume(not any(waits_forever(r) for r in requests))
    h = fuzz_harness(requirepass)
    for request in requests:
        execute_all(h, [request])
        h.clock.advance(step)  # lets the TTL key expire part-way through some runs


# -- the decoder -----------------------------------------------------------------------

def decode(data: bytes, cuts=()) -> tuple[list, type | None]:
    """Feed `data` in pieces cut at `cuts`, as net.py does; return the values and the error class, if any."""
    unpacker = protocol.new_unpacker(LIMIT)
    values = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for start, end in zip(bounds, bounds[1:]):
            unpacker.feed(data[start:end])
            values.extend(unpacker)
    except protocol.DECODE_ERRORS as exc:
        return values, type(exc)
    return values, None


def same_outcome(first: tuple, second: tuple) -> bool:
    """Compare two `decode` results by their packed values (NaN is not equal to itself)."""
    return [msgpack.packb(v) for v in first[0]] == [msgpack.packb(v) for v in second[0]] and first[1] is second[1]


CUTS = st.lists(st.integers(0, 10_000), max_size=5)


@FUZZ
@given(st.binary(max_size=300), CUTS)
def test_arbitrary_bytes_decode_to_values_or_a_declared_error_however_they_are_cut(data, cuts):
    whole = decode(data)
    assert same_outcome(decode(data, cuts), whole)
    execute_all(fuzz_harness(None), [v for v in whole[0] if not waits_forever(v)])


@FUZZ
@given(VALUES, CUTS)
def test_every_msgpack_value_decodes_to_itself_however_it_is_cut(value, cuts):
    data = msgpack.packb(value, use_bin_type=True)
    values, error = decode(data, cuts)
    assert error is None
    assert [msgpack.packb(v, use_bin_type=True) for v in values] == [data]


# Headers of the variable-length types with a 32-bit length (ext32 also takes its type byte).
HEADERS_32 = {"str32": b"\xdb", "bin32": b"\xc6", "array32": b"\xdd", "map32": b"\xdf", "ext32": b"\xc9"}


def header(kind: str, length: int) -> bytes:
    """The header of a `kind` value declaring `length` bytes (or items, or pairs) that do not follow."""
    return HEADERS_32[kind] + length.to_bytes(4, "big") + (b"\x01" if kind == "ext32" else b"")


@settings(FUZZ, max_examples=100)
@given(st.sampled_from(sorted(HEADERS_32)), st.integers(LIMIT + 1, 2**32 - 1))
def test_a_declared_length_over_the_limit_never_completes_a_value(kind, length):
    unpacker = protocol.new_unpacker(LIMIT)
    unpacker.feed(header(kind, length))
    # An array or a map is refused at its header; a str, bin or ext waits for
    # its bytes, and the buffer refuses them soon after the limit.
    with pytest.raises(protocol.DECODE_ERRORS):
        for _ in range(9):
            assert list(unpacker) == []
            unpacker.feed(b"\x00" * (LIMIT // 4))


@FUZZ
@given(st.sampled_from(sorted(HEADERS_32)), st.integers(1, LIMIT // 2), st.integers(0, 20))
def test_a_declared_length_within_the_limit_waits_for_its_bytes(kind, length, sent):
    values, error = decode(header(kind, length) + b"\x01" * min(sent, length - 1))
    assert values == [] and error is None


def nested(depth: int, kind: str) -> bytes:
    """A value `depth` containers deep: one-element arrays, or one-pair maps {'k': ...}."""
    opener = b"\x91" if kind == "array" else b"\x81\xa1k"
    return opener * depth + b"\x01"


CONTAINER_KEYS = st.lists(SCALARS, max_size=2) | st.dictionaries(HASHABLE, SCALARS, max_size=2)
HOSTILE = st.one_of(
    st.builds(nested, st.integers(1, 3000), st.sampled_from(["array", "map"])),
    st.builds(header, st.sampled_from(sorted(HEADERS_32)), st.integers(0, 2**32 - 1)),
    # A map whose key is an array or a map: valid MessagePack that Python cannot hold in a dict.
    st.builds(lambda k, v: b"\x81" + msgpack.packb(k) + msgpack.packb(v), CONTAINER_KEYS, SCALARS),
    REQUESTS.map(lambda r: msgpack.packb(r, use_bin_type=True)),
)


@FUZZ
@given(st.lists(HOSTILE, min_size=1, max_size=4).map(b"".join), CUTS)
def test_hostile_encodings_decode_to_values_or_a_declared_error_and_never_fault_the_engine(data, cuts):
    whole = decode(data)
    assert same_outcome(decode(data, cuts), whole)
    execute_all(fuzz_harness(None), [v for v in whole[0] if not waits_forever(v)])


# -- the generated parse against the rules written as a loop ------------------------------

def reference_parse(spec, request: dict) -> tuple:
    """What a spec's parse must return for `request`, written as a plain loop over its fields."""
    consistent = request.get("consistent")
    if spec.is_read and consistent is not None and type(consistent) is not bool:
        raise GeomysError("consistent")
    args = ["store", "ctx"]
    for field in spec.fields:
        raw = request.get(field.name)
        if raw is None:
            if field.required:
                raise GeomysError(field.name)
            args.append(field.default)
        else:
            args.append(field.convert(raw, field.name))
    return tuple(args)


def outcome(parse, request):
    """('ok', args) or ('error', the field the BadRequest names)."""
    try:
        return "ok", parse(request)
    except GeomysError as exc:
        field = next((f for f in ["consistent", *PLAUSIBLE] if "'%s'" % f in exc.message or f == exc.message), None)
        return "error", field


@FUZZ
@given(st.sampled_from(sorted({spec.name: spec for spec in TABLE.values()}.values(), key=lambda s: s.name)),
       REQUESTS, st.sampled_from([None, True, False, "yes", 1]))
def test_each_generated_parse_returns_what_the_fields_rules_say(spec, request, consistent):
    if consistent is not None:
        request = dict(request, consistent=consistent)
    generated = outcome(lambda r: spec.parse(r, "store", "ctx"), request)
    expected = outcome(lambda r: reference_parse(spec, r), request)
    assert generated == expected, spec.parse_source
    if generated[0] == "error":
        assert generated[1] is not None
