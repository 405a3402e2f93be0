"""Secret XML (<secret>): parse and format, as src/conf/secret_conf.c does."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_libvirt, format_uuid, new_uuid, parse_definition, parse_uuid

_FROM = P.VIR_FROM_SECRET

# virSecretUsageType: the usage element's type, its number and the child naming the use.
USAGE_TYPES = {"none": (0, None), "volume": (1, "volume"), "ceph": (2, "name"),
               "iscsi": (3, "target"), "tls": (4, "name"), "vtpm": (5, "name")}


@dataclass
class SecretDef:
    uuid: bytes
    ephemeral: bool = False
    private: bool = False
    description: str | None = None
    usage_type: str = "none"
    usage_id: str | None = None

    @property
    def usage_number(self) -> int:
        return USAGE_TYPES[self.usage_type][0]


def _bool_attr(root: etree._Element, attr: str) -> bool:
    value = root.get(attr)
    if value is None:
        return False
    if value not in ("yes", "no"):
        raise VirError(P.VIR_ERR_XML_ERROR, f"invalid value of '{attr}'", domain=_FROM)
    return value == "yes"


def parse(text: str, *, validate_schema: bool = False) -> SecretDef:
    """A client's <secret>; ``validate_schema`` checks it against schemas/secret.rng."""
    root = parse_definition(text, "secret", what="secret_definition", domain=_FROM,
                            validate="secret" if validate_schema else None)
    ephemeral = _bool_attr(root, "ephemeral")
    private = _bool_attr(root, "private")
    uuid_text = root.findtext("uuid")
    if uuid_text is None:
        raw = new_uuid()
    else:
        try:
            raw = parse_uuid(uuid_text)
        except VirError:
            raise VirError(P.VIR_ERR_XML_ERROR, "malformed uuid element", domain=_FROM) from None
    secret = SecretDef(raw, ephemeral, private, root.findtext("description"))
    usage = root.find("usage")
    if usage is not None:
        utype = usage.get("type")
        if utype is None:
            raise VirError(P.VIR_ERR_XML_ERROR, "missing secret usage type", domain=_FROM)
        if utype not in USAGE_TYPES:
            raise VirError(P.VIR_ERR_XML_ERROR, f"unknown secret usage type {utype}",
                           domain=_FROM)
        secret.usage_type = utype
        child = USAGE_TYPES[utype][1]
        if child is not None:
            value = usage.findtext(child)
            if not value:
                what = {"volume": "volume path", "ceph": "ceph usage name",
                        "iscsi": "iscsi usage target", "tls": "TLS usage name",
                        "vtpm": "vTPM usage name"}[utype]
                raise VirError(P.VIR_ERR_XML_ERROR, f"{what} is not specified" if utype != "volume"
                               else "volume usage specified, but volume path is missing",
                               domain=_FROM)
            secret.usage_id = value
    return secret


def format(secret: SecretDef) -> str:
    root = etree.Element("secret", ephemeral="yes" if secret.ephemeral else "no",
                         private="yes" if secret.private else "no")
    etree.SubElement(root, "uuid").text = format_uuid(secret.uuid)
    if secret.description is not None:
        etree.SubElement(root, "description").text = secret.description
    if secret.usage_type != "none":
        usage = etree.SubElement(root, "usage", type=secret.usage_type)
        etree.SubElement(usage, USAGE_TYPES[secret.usage_type][1]).text = secret.usage_id
    return format_libvirt(root)
