"""The generated XDR codec: known encodings, decode limits, and a round trip of every type.

The property test builds a hypothesis strategy for every struct and union
from the generator's own type model (tools/gen_protocol.py), so a new type in
the protocol JSON is covered without touching this file.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc.xdr import XdrError, XdrStringError, decode, encode

REPO = Path(__file__).resolve().parents[3]
PROTOCOL_JSON = REPO.parent / "shared" / "reference" / "libvirt-rpc.json"


def words(*values: int) -> bytes:
    return b"".join(struct.pack(">i" if v < 0 else ">I", v) for v in values)


UUID = bytes(range(0xA0, 0xB0))

# remote_nonnull_domain {remote_nonnull_string name; remote_uuid uuid; int id}
DOMAIN_TEST_INACTIVE = (
    words(4) + b"test"          # name: length 4, "test" (no padding needed)
    + UUID                      # uuid: opaque[16], 16 raw bytes, no length word
    + words(-1)                 # id: -1 = inactive (0xFFFFFFFF)
)


# ------------------------------------------------------------ known encodings

def test_nonnull_domain() -> None:
    dom = P.remote_nonnull_domain("test", UUID, -1)
    assert encode(P.pack_remote_nonnull_domain, dom) == DOMAIN_TEST_INACTIVE
    assert DOMAIN_TEST_INACTIVE[-4:] == b"\xff\xff\xff\xff"
    assert decode(P.unpack_remote_nonnull_domain, DOMAIN_TEST_INACTIVE) == dom


def test_string_padding() -> None:
    dom = P.remote_nonnull_domain("vm1", UUID, 3)
    expected = words(3) + b"vm1\0" + UUID + words(3)   # "vm1" padded to 4 bytes
    assert encode(P.pack_remote_nonnull_domain, dom) == expected
    assert decode(P.unpack_remote_nonnull_domain, expected) == dom


def test_remote_string_null_and_set() -> None:
    # CONNECT_OPEN args {remote_string name; unsigned flags}
    null = P.remote_connect_open_args(None, 0)
    assert encode(P.pack_remote_connect_open_args, null) == words(
        0,               # name: optional flag 0 = NULL
        0)               # flags
    uri = P.remote_connect_open_args("test:///default", 1)
    assert encode(P.pack_remote_connect_open_args, uri) == (
        words(1)         # name: optional flag 1 = present
        + words(15) + b"test:///default\0"   # length 15, bytes, 1 padding byte
        + words(1))      # flags = VIR_CONNECT_RO
    for v in (null, uri):
        assert decode(P.unpack_remote_connect_open_args,
                      encode(P.pack_remote_connect_open_args, v)) == v


def test_sasl_data_is_one_word_per_byte() -> None:
    args = P.remote_auth_sasl_start_args("PLAIN", 0, b"\x00ab\xff")
    assert encode(P.pack_remote_auth_sasl_start_args, args) == (
        words(5) + b"PLAIN\0\0\0"   # mech
        + words(0)                 # nil
        + words(4)                 # data: count 4
        + words(0, ord("a"), ord("b"), 0xFF))   # each char widened to 4 bytes
    assert decode(P.unpack_remote_auth_sasl_start_args,
                  encode(P.pack_remote_auth_sasl_start_args, args)) == args


def test_sasl_data_accepts_sign_extended_chars() -> None:
    # libvirt's xdr_char sends a char as a signed int: 0xFF arrives as -1
    wire = words(
        1,               # complete
        0,               # nil
        2,               # data: count
        -1, ord("z"))    # 0xFF sign-extended, then "z"
    ret = decode(P.unpack_remote_auth_sasl_step_ret, wire)
    assert ret.data == b"\xffz"


def test_node_info_model_is_32_words() -> None:
    info = P.remote_node_get_info_ret(b"x86_64", 8 << 20, 4, 2000, 1, 1, 2, 2)
    out = encode(P.pack_remote_node_get_info_ret, info)
    assert len(out) == 160
    assert out[:128] == words(*b"x86_64", *([0] * 26))
    assert out[128:] == words(0, 8 << 20, 4, 2000, 1, 1, 2, 2)
    assert decode(P.unpack_remote_node_get_info_ret, out).model == b"x86_64" + bytes(26)


@pytest.mark.parametrize("value, wire", [
    ((1, -5), words(1, -5)),                          # VIR_TYPED_PARAM_INT: int
    ((2, 0xFFFFFFFF), words(2, 0xFFFFFFFF)),          # UINT: unsigned int
    ((3, -2), words(3, -1, -2)),                      # LLONG: hyper
    ((4, 1 << 40), words(4, 1 << 8, 0)),              # ULLONG: unsigned hyper
    ((5, 1.5), words(5) + struct.pack(">d", 1.5)),    # DOUBLE: 8-byte IEEE
    ((6, 1), words(6, 1)),                            # BOOLEAN: int
    ((7, "ab"), words(7, 2) + b"ab\0\0"),             # STRING: remote_nonnull_string
])
def test_typed_param_union(value: tuple, wire: bytes) -> None:
    param = P.remote_typed_param("f", P.remote_typed_param_value(*value))
    expected = words(1) + b"f\0\0\0" + wire           # field name, then the union
    assert encode(P.pack_remote_typed_param, param) == expected
    assert decode(P.unpack_remote_typed_param, expected) == param


def test_typed_param_bad_discriminant() -> None:
    with pytest.raises(XdrError, match="bad discriminant"):
        decode(P.unpack_remote_typed_param_value, words(8, 0))
    with pytest.raises(XdrError, match="bad discriminant"):
        encode(P.pack_remote_typed_param_value, P.remote_typed_param_value(0, 1))


def test_list_all_domains_reply() -> None:
    ret = P.remote_connect_list_all_domains_ret(
        [P.remote_nonnull_domain("test", UUID, -1)], 1)
    wire = words(1) + DOMAIN_TEST_INACTIVE + words(1)  # count, domain, ret
    assert encode(P.pack_remote_connect_list_all_domains_ret, ret) == wire
    assert decode(P.unpack_remote_connect_list_all_domains_ret, wire) == ret


def test_error_body() -> None:
    err = P.remote_error(42, 10, "Domain not found", 2, None, "Domain not found: %s",
                         "x", None, -1, -1, None)
    out = encode(P.pack_remote_error, err)
    assert out == (words(42, 10)                      # code, domain
                   + words(1, 16) + b"Domain not found"   # message
                   + words(2)                         # level: ERROR
                   + words(0)                         # dom: NULL
                   + words(1, 20) + b"Domain not found: %s"   # str1
                   + words(1, 1) + b"x\0\0\0"         # str2
                   + words(0)                         # str3: NULL
                   + words(-1, -1)                    # int1, int2
                   + words(0))                        # net: NULL
    assert decode(P.unpack_remote_error, out) == err


# ---------------------------------------------------------------- decode limits

def test_string_longer_than_its_max() -> None:
    # remote_nonnull_string max is REMOTE_STRING_MAX (4 MiB); only the length is sent
    with pytest.raises(XdrError, match="exceeds"):
        decode(P.unpack_remote_connect_get_hostname_ret, words(P.REMOTE_STRING_MAX + 1))


def test_list_longer_than_its_max() -> None:
    # remote_connect_list_all_domains_ret.domains<REMOTE_DOMAIN_LIST_MAX = 16384>
    with pytest.raises(XdrError, match="exceed 16384"):
        decode(P.unpack_remote_connect_list_all_domains_ret, words(16385))


def test_list_count_larger_than_the_buffer() -> None:
    with pytest.raises(XdrError):
        decode(P.unpack_remote_connect_list_all_domains_ret, words(1000, 0))


def test_bytes_longer_than_sasl_max() -> None:
    with pytest.raises(XdrError, match="exceed 65536"):
        decode(P.unpack_remote_auth_sasl_step_args, words(0, 65537))


def test_bad_optional_flag() -> None:
    with pytest.raises(XdrError, match="bad optional flag 2"):
        decode(P.unpack_remote_connect_open_args, words(2, 0))


@pytest.mark.parametrize("cut", range(0, len(DOMAIN_TEST_INACTIVE)))
def test_truncated_input(cut: int) -> None:
    with pytest.raises(XdrError):
        decode(P.unpack_remote_nonnull_domain, DOMAIN_TEST_INACTIVE[:cut])


def test_truncated_char_array() -> None:
    with pytest.raises(XdrError):
        decode(P.unpack_remote_node_get_info_ret, bytes(100))
    with pytest.raises(XdrError):
        decode(P.unpack_remote_auth_sasl_step_args, words(0, 3, 1))


def test_trailing_bytes() -> None:
    with pytest.raises(XdrError, match="4 unexpected trailing bytes"):
        decode(P.unpack_remote_nonnull_domain, DOMAIN_TEST_INACTIVE + words(0))
    # exact=False allows them and leaves the rest to the caller
    assert decode(P.unpack_remote_nonnull_domain, DOMAIN_TEST_INACTIVE + words(0),
                  exact=False).name == "test"


def test_invalid_utf8_is_refused_as_a_string_error() -> None:
    # refused once, at decoding, instead of failing wherever the text is used again
    wire = words(2) + b"\xff\xfe\0\0"
    with pytest.raises(XdrStringError, match="not valid UTF-8"):
        decode(P.unpack_remote_connect_get_hostname_ret, wire)


def test_decode_accepts_memoryview() -> None:
    assert decode(P.unpack_remote_nonnull_domain,
                  memoryview(DOMAIN_TEST_INACTIVE)).uuid == UUID


# --------------------------------------------------- round trip of every type

def _load_generator():
    path = REPO / "tools" / "gen_protocol.py"
    spec = importlib.util.spec_from_file_location("gen_protocol", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.modules["gen_protocol"] = mod   # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


if PROTOCOL_JSON.exists():
    GEN = _load_generator()
    FACTS = json.loads(PROTOCOL_JSON.read_text())
    MODEL = GEN.Model(FACTS)
    TYPE_NAMES = sorted(FACTS["structs"]) + sorted(FACTS["unions"])
else:  # pragma: no cover - depends on the checkout
    GEN = FACTS = MODEL = None
    TYPE_NAMES = []

needs_json = pytest.mark.skipif(
    FACTS is None, reason=f"protocol facts {PROTOCOL_JSON} are absent (they live outside the repo)")

# Keep values small: the point is the shape of every type, not big data.
MAX_LIST = 3
MAX_TEXT = 12

_INT_RANGES = {
    "i": (-(1 << 31), (1 << 31) - 1), "I": (0, (1 << 32) - 1),
    "q": (-(1 << 63), (1 << 63) - 1), "Q": (0, (1 << 64) - 1),
}
# Strings decode strictly (non-UTF-8 bytes are refused, see
# test_invalid_utf8_is_refused_as_a_string_error), so round trips draw text.
_TEXT = st.text(max_size=MAX_TEXT // 4)


def _prim(fmt: str) -> st.SearchStrategy:
    if fmt in _INT_RANGES:
        return st.integers(*_INT_RANGES[fmt])
    if fmt == "f":
        return st.floats(width=32, allow_nan=False)
    return st.floats(allow_nan=False)


_named: dict[str, st.SearchStrategy] = {}


def strategy(node) -> st.SearchStrategy:
    """A hypothesis strategy for one node of the generator's type model."""
    if isinstance(node, GEN.Prim):
        return _prim(node.fmt)
    if isinstance(node, GEN.String):
        assert node.max >= MAX_TEXT
        return _TEXT
    if isinstance(node, (GEN.Opaque, GEN.ByteArray)):
        if node.size is not None:
            return st.binary(min_size=node.size, max_size=node.size)
        return st.binary(max_size=min(node.max, 8))
    if isinstance(node, GEN.Optional_):
        return st.none() | strategy(node.inner)
    if isinstance(node, GEN.Array):
        inner = strategy(node.inner)
        if node.size is not None:
            return st.lists(inner, min_size=node.size, max_size=node.size)
        return st.lists(inner, max_size=min(node.max, MAX_LIST))
    if isinstance(node, GEN.Named):
        return named_strategy(node.name)
    raise TypeError(node)


def named_strategy(name: str) -> st.SearchStrategy:
    if name not in _named:
        _named[name] = st.deferred(lambda: _build_named(name))
    return _named[name]


def _build_named(name: str) -> st.SearchStrategy:
    cls = getattr(P, name)
    if name in FACTS["unions"]:
        arms = []
        for arm in FACTS["unions"][name]["arms"]:
            value = st.none() if arm.get("type") == "void" else strategy(MODEL.field(arm))
            arms.append(st.tuples(st.sampled_from(arm["case_values"]), value))
        return st.one_of(arms).map(lambda dv: cls(*dv))
    fields = [strategy(MODEL.field(f)) for f in FACTS["structs"][name]["fields"]]
    return st.tuples(*fields).map(lambda t: cls(*t))


@needs_json
def test_every_type_has_a_codec() -> None:
    assert len(TYPE_NAMES) > 700
    missing = [n for n in TYPE_NAMES
               if not all(hasattr(P, f"{k}{n}") for k in ("", "pack_", "unpack_"))]
    assert missing == []


# Hypothesis costs about a millisecond per example whatever its size, so the
# types are checked in batches: each example draws one value of every type in
# its batch.  Ten examples per type for all ~740 types take ~6 s on 2 cores
# (the cost is linear in examples: twenty would double it).
BATCH = 16
BATCHES = [TYPE_NAMES[i:i + BATCH] for i in range(0, len(TYPE_NAMES), BATCH)]


@needs_json
@pytest.mark.parametrize("names", BATCHES, ids=lambda names: f"{names[0]}..{names[-1]}")
def test_round_trip(names: list[str]) -> None:
    codecs = [(n, getattr(P, f"pack_{n}"), getattr(P, f"unpack_{n}")) for n in names]

    @settings(max_examples=10, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data) -> None:
        for name, pack, unpack in codecs:
            value = data.draw(named_strategy(name), label=name)
            wire = encode(pack, value)
            assert len(wire) % 4 == 0, name
            assert decode(unpack, bytes(wire)) == value, name
            # the encoder is a function of the value alone
            assert encode(pack, decode(unpack, wire)) == wire, name

    check()
