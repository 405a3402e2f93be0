"""Names clients give objects, checked in one place, and the file paths built from them.

The daemon runs as root and keeps one file per object named after it
(``network/NAME.xml``, ``qemu/NAME.xml``, a network's ``NAME/ports``
directory, a dir pool's volume files).  A name such as ``../network/x`` or
``/tmp/x`` would make it write and delete files anywhere, so:

- `check_name` refuses what libvirt refuses in each kind's name, with
  libvirt 9.0's code and wording ('/' everywhere a name becomes a file;
  a newline in domain and pool names), and the names no file can carry
  ('', NUL, and '.' or '..' except for volumes, which their backend refuses);
- `name_path` is the only way a path is built from a name: it refuses any
  leaf that would leave its directory, so a parser that forgot `check_name`
  still cannot make the daemon escape its state directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P


@dataclass(frozen=True)
class _Rule:
    """How one kind of object refuses a bad name."""
    domain: int              # the error domain libvirt reports it from
    slash: str               # "name" (XML error, "name X cannot contain '/'"),
                             # "char" (XML detail, "invalid char in name: /")
                             # or "volume" (the dir backends' operation-invalid wording)
    newline: bool            # '\n' refused too (libvirt: domain and pool define)


_RULES: dict[str, _Rule] = {
    "domain": _Rule(P.VIR_FROM_DOMAIN, "name", newline=True),
    "network": _Rule(P.VIR_FROM_NETWORK, "char", newline=False),
    "pool": _Rule(P.VIR_FROM_STORAGE, "name", newline=True),
    "volume": _Rule(P.VIR_FROM_STORAGE, "volume", newline=False),
    # libvirt 9.0 takes '/' in snapshot names; its QEMU driver then writes
    # SNAPSHOTDIR/DOMAIN/NAME.xml.  Refused here, in the domain's wording.
    "snapshot": _Rule(P.VIR_FROM_DOMAIN_SNAPSHOT, "name", newline=False),
    "nwfilter": _Rule(P.VIR_FROM_NWFILTER, "name", newline=False),
}


def _invalid_char(char: str) -> VirError:
    # virXMLCheckIllegalChars: VIR_ERR_XML_DETAIL from VIR_FROM_XML, no prefix
    return VirError(P.VIR_ERR_XML_DETAIL, domain=P.VIR_FROM_XML,
                    message=f"invalid char in name: {char}")


def check_name(kind: str, name: str, *, error_domain: int | None = None) -> str:
    """Refuse a ``kind`` object's ``name`` that libvirt refuses or no file can carry.

    ``kind`` is one of domain, network, pool, volume, snapshot, nwfilter;
    ``error_domain`` replaces the kind's error domain where libvirt reports
    from a driver's (the test driver's rename).  Returns the name.
    """
    rule = _RULES[kind]
    if error_domain is not None:
        rule = _Rule(error_domain, rule.slash, rule.newline)
    if not name:
        raise VirError(P.VIR_ERR_NO_NAME, "missing name information", domain=rule.domain)
    if "\0" in name:
        raise _invalid_char("\\0")
    if rule.newline and "\n" in name:
        raise _invalid_char("\n")
    if "/" in name:
        if rule.slash == "char":
            raise _invalid_char("/")
        if rule.slash == "volume":
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"volume name '{name}' cannot contain '/'", domain=rule.domain)
        raise VirError(P.VIR_ERR_XML_ERROR, f"name {name} cannot contain '/'",
                       domain=rule.domain)
    if name in (".", "..") and kind != "volume":
        # libvirt takes these; here they would name a directory (a network's
        # own status directory) instead of a file in it.  A volume's backend
        # refuses them in libvirt's words (the path exists already).
        raise VirError(P.VIR_ERR_XML_ERROR, f"name '{name}' is not allowed: it names a directory",
                       domain=rule.domain)
    return name


class UnsafeName(VirError):
    """A path was about to be built from a name `check_name` should have refused."""


def name_path(directory: Path | str, name: str, suffix: str = "") -> Path:
    """``directory / (name + suffix)``, refusing any leaf that leaves ``directory``.

    Every file or directory the daemon names after an object is built here.
    The leaf must be one path component: not empty, not '.' or '..', without
    '/' or NUL.  A refusal is an internal error (the name should never have
    been accepted) that names no file content.
    """
    leaf = f"{name}{suffix}"
    if not name or leaf in (".", "..") or "/" in leaf or "\0" in leaf:
        raise UnsafeName(P.VIR_ERR_INTERNAL_ERROR,
                         f"refusing to build a path from the name {name!r}")
    return Path(directory) / leaf
