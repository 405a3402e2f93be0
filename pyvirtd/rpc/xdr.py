"""XDR runtime shared by the generated codec (pyvirtd/rpc/_generated.py).

The generator inlines fixed-size fields as precompiled ``struct`` formats, so this
module only holds what every generated function needs: the error type, the
padding table and the helpers for variable-length pieces.  Decoders take
``(buf, offset)`` and return ``(value, new_offset)``; encoders append to a
``bytearray``.  A truncated buffer surfaces as ``struct.error`` or ``XdrError``;
:func:`decode` turns both into ``XdrError`` so callers see one failure type.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

__all__ = ["XdrError", "XdrStringError", "PAD", "decode", "encode"]


class XdrError(ValueError):
    """The bytes are not a valid XDR encoding of the expected type (peer's fault)."""


class XdrStringError(XdrError):
    """A string that is not UTF-8: well-formed XDR, but no text the daemon can use.

    Strings are decoded strictly so that bad bytes are refused here, once, as an
    invalid argument, instead of failing later wherever the text is encoded
    again (a file name, the XML parser, a log line).
    """


# Zero bytes needed after n bytes of data to reach a 4-byte boundary, indexed by n % 4.
PAD = (b"", b"\0\0\0", b"\0\0", b"\0")

U32 = struct.Struct(">I")


def decode(unpack: Callable[[Any, int], tuple[Any, int]], buf: bytes | memoryview,
           offset: int = 0, *, exact: bool = True) -> Any:
    """Decode one value with a generated ``unpack_*`` function.

    With ``exact`` (the default) trailing bytes are an error, as libvirt's
    decoder rejects a body that does not end where the type ends.
    """
    try:
        value, end = unpack(buf, offset)
    except struct.error as exc:
        raise XdrError(f"truncated XDR data: {exc}") from None
    except UnicodeDecodeError as exc:
        raise XdrStringError(f"string is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except IndexError as exc:
        raise XdrError(f"malformed XDR data: {exc}") from None
    if exact and end != len(buf):
        raise XdrError(f"{len(buf) - end} unexpected trailing bytes")
    return value


def encode(pack: Callable[[Any, bytearray], None], value: Any) -> bytearray:
    """Encode one value with a generated ``pack_*`` function."""
    out = bytearray()
    pack(value, out)
    return out
