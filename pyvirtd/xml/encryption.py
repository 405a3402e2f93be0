"""<encryption>: how a volume or a disk image is encrypted, and which secret opens it.

The element is shared by storage volumes (``<target><encryption>``) and
domain disks (``<disk><encryption>`` or ``<source><encryption>``), as in
libvirt's storage_encryption.c::

    <encryption format='luks'>
      <secret type='passphrase' uuid='...'/>       (or usage='...')
      <cipher name='aes' size='256' mode='xts' hash='sha256'/>     optional
      <ivgen name='plain64' hash='sha256'/>                         optional
    </encryption>

`parse` refuses what libvirt's parser refuses, with its words;
`Encryption.passphrase` reads the one passphrase secret through the daemon's
secret subsystem (the only place that looks a LUKS secret up, so storage and
the QEMU driver share it).  `qemu_luks_options` gives qemu-img's creation
options for <cipher>/<ivgen>.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

_FROM = P.VIR_FROM_STORAGE

# virStorageEncryptionFormat (the 'default' of an element without format is refused)
FORMATS = ("default", "qcow", "luks", "luks2", "luks-any")
ENGINES = ("default", "qemu", "librbd")
SECRET_TYPES = ("passphrase",)
# the secret usage a LUKS passphrase must have (VIR_SECRET_USAGE_TYPE_VOLUME)
USAGE = "volume"


@dataclass(frozen=True)
class Encryption:
    """One parsed <encryption>; ``secrets`` are (uuid, usage) pairs, one set each."""
    format: str
    secrets: tuple[tuple[str | None, str | None], ...] = ()
    engine: str | None = None
    cipher: dict[str, str] | None = None
    ivgen: dict[str, str] | None = None

    def single_secret(self) -> tuple[str | None, str | None]:
        """The passphrase secret LUKS needs: exactly one, as libvirt insists."""
        if len(self.secrets) != 1:
            raise VirError(P.VIR_ERR_INVALID_ARG, "A single <secret type='passphrase'...> "
                           "element is expected in encryption description", domain=_FROM)
        return self.secrets[0]

    def passphrase(self, secrets: Any) -> bytes:
        """The passphrase, read by the daemon (a private secret too).

        ``secrets`` is the daemon's secret subsystem (None: it has none).
        :raises VirError: libvirt's: VIR_ERR_NO_SECRET (unknown, or no value),
            VIR_ERR_INVALID_ARG (a secret of another usage, not one secret).
        """
        uuid, usage = self.single_secret()
        if secrets is None:
            raise VirError(P.VIR_ERR_NO_SECRET, f"no secret with matching uuid '{uuid}'"
                           if uuid else f"no secret with matching usage '{usage}'",
                           domain=P.VIR_FROM_SECRET)
        if uuid:
            return secrets.value_of_uuid(uuid, USAGE)
        return secrets.value_of(USAGE, usage or "")

    def to_element(self) -> etree._Element:
        elem = etree.Element("encryption", format=self.format)
        if self.engine:
            elem.set("engine", self.engine)
        for uuid, usage in self.secrets:
            sec = etree.SubElement(elem, "secret", type="passphrase")
            if uuid:
                sec.set("uuid", uuid)
            else:
                sec.set("usage", usage or "")
        if self.cipher:
            etree.SubElement(elem, "cipher", self.cipher)
        if self.ivgen:
            etree.SubElement(elem, "ivgen", self.ivgen)
        return elem


def parse(elem: etree._Element) -> Encryption:
    """An <encryption> element (virStorageEncryptionParseNode)."""
    fmt = elem.get("format")
    if fmt is None:
        raise VirError(P.VIR_ERR_XML_ERROR, "unknown volume encryption format", domain=_FROM)
    if fmt not in FORMATS:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"unknown volume encryption format type {fmt}", domain=_FROM)
    engine = elem.get("engine")
    if engine is not None and engine not in ENGINES:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"unknown volume encryption engine type {engine}", domain=_FROM)
    secrets = []
    for sec in elem.findall("secret"):
        stype = sec.get("type")
        if stype is None:
            raise VirError(P.VIR_ERR_XML_ERROR, "unknown volume encryption secret type",
                           domain=_FROM)
        if stype not in SECRET_TYPES:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"unknown volume encryption secret type {stype}", domain=_FROM)
        uuid, usage = sec.get("uuid"), sec.get("usage")
        if bool(uuid) == bool(usage):
            raise VirError(P.VIR_ERR_XML_ERROR, "either secret uuid or usage expected",
                           domain=_FROM)
        secrets.append((uuid, usage))
    cipher = elem.find("cipher")
    ivgen = elem.find("ivgen")
    return Encryption(format=fmt, secrets=tuple(secrets), engine=engine,
                      cipher=dict(cipher.attrib) if cipher is not None else None,
                      ivgen=dict(ivgen.attrib) if ivgen is not None else None)


def qemu_luks_options(enc: Encryption, prefix: str = "") -> list[str]:
    """qemu-img's LUKS creation options from <cipher> and <ivgen> (``prefix``:
    ``encrypt.`` inside a qcow2 image)."""
    out = []
    c, iv = enc.cipher or {}, enc.ivgen or {}
    if c.get("name") and c.get("size"):
        out.append(f"{prefix}cipher-alg={c['name']}-{c['size']}")
    if c.get("mode"):
        out.append(f"{prefix}cipher-mode={c['mode']}")
    if c.get("hash"):
        out.append(f"{prefix}hash-alg={c['hash']}")
    if iv.get("name"):
        out.append(f"{prefix}ivgen-alg={iv['name']}")
    if iv.get("hash"):
        out.append(f"{prefix}ivgen-hash-alg={iv['hash']}")
    return out
