"""send-key's translation of libvirt's keycode sets to QEMU qnum codes (drivers/qemu/passthrough.py).

The same key ('a', right Ctrl, the Windows key) in every set must reach
QEMU as the same qnum; the tables are generated from keycodemapdb's data
(tools/gen_keycodes.py), so this checks the join and the set numbering.
"""

from __future__ import annotations

import pytest

from pyvirtd.drivers.qemu.passthrough import to_qnum
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

S = P.KeycodeSet
# key: (linux, set 1, set 2, USB HID usage, qnum)
KEYS = {
    "a": (30, 0x1e, 0x1c, 0x04, 0x1e),
    "right ctrl": (97, 0xe01d, 0xe014, 0xe4, 0x9d),
    "left meta": (125, 0xe05b, 0xe01f, 0xe3, 0xdb),
}


@pytest.mark.parametrize("key", KEYS)
def test_same_key_in_every_set(key):
    linux, set1, set2, usb, qnum = KEYS[key]
    assert to_qnum(S.VIR_KEYCODE_SET_LINUX, [linux]) == [qnum]
    assert to_qnum(S.VIR_KEYCODE_SET_ATSET1, [set1]) == [qnum]
    assert to_qnum(S.VIR_KEYCODE_SET_ATSET2, [set2]) == [qnum]
    assert to_qnum(S.VIR_KEYCODE_SET_USB, [usb]) == [qnum]
    assert to_qnum(S.VIR_KEYCODE_SET_QNUM, [qnum]) == [qnum]


def test_xt_has_only_the_original_keys():
    assert to_qnum(S.VIR_KEYCODE_SET_XT, [0x1e]) == [0x1e]
    with pytest.raises(VirError, match="cannot translate keycode 57373 of xt codeset"):
        to_qnum(S.VIR_KEYCODE_SET_XT, [0xe01d])


@pytest.mark.parametrize("codeset, name", [(S.VIR_KEYCODE_SET_OSX, "os_x"),
                                           (S.VIR_KEYCODE_SET_WIN32, "win32")])
def test_sets_without_a_table_are_refused_in_libvirts_words(codeset, name):
    with pytest.raises(VirError) as err:
        to_qnum(codeset, [4])
    assert err.value.code == P.VIR_ERR_INTERNAL_ERROR
    assert err.value.detail == f"cannot translate keycode 4 of {name} codeset to qnum keycode"
