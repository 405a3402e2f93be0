"""pyvirtd's own RelaxNG schemas (schemas/) beside libvirt's installed ones.

Every document the project keeps as valid input or expected output must
validate against both; the invalid ones must be refused by ours with the
message libvirt's schema gives (libxml2 writes both).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain, network, schema, storage

from tests.unit.xml.test_object_xml import NETWORK, POOL, VOLUME

DATA = Path(__file__).resolve().parents[2] / "data"
LIBVIRT_SCHEMAS = Path("/usr/share/libvirt/schemas")

# Valid domain documents: the xml2xml inputs and outputs, the xml2argv inputs,
# and schema/domain (what libvirt's QEMU tests and virt-manager write, for
# parts pyvirtd keeps verbatim: tuning, firmware, bridges, SPICE, metadata).
DOMAIN_FILES = sorted([*DATA.glob("xml2xml/*/in/*.xml"), *DATA.glob("xml2xml/*/out/*.xml"),
                       *DATA.glob("xml2argv/*.xml"), *DATA.glob("schema/domain/*.xml")])
# libvirt 9.0's schema predates <watchdog model='itco'> (libvirt 9.1).
NEWER_THAN_LIBVIRT_9_0 = {"ovmf.xml"}


def libvirt_errors(root: etree._Element, kind: str) -> list[str] | None:
    rng = etree.RelaxNG(etree.parse(str(LIBVIRT_SCHEMAS / f"{kind}.rng")))
    return None if rng.validate(root) else [e.message for e in rng.error_log]


def parse(text: str) -> etree._Element:
    return etree.fromstring(text.encode())


# A container as the LXC driver's clients write it and as it prints it running.
LXC_DOMAINS = {
    "lxc-input": """<domain type='lxc'>
  <name>c2</name>
  <memory unit='MiB'>64</memory>
  <os><type>exe</type><init>/sbin/init</init></os>
  <devices>
    <filesystem type='mount'><source dir='/srv/root'/><target dir='/'/></filesystem>
    <interface type='bridge'><source bridge='br0'/>
      <ip address='10.99.0.2' prefix='24'/><guest dev='eth0'/></interface>
    <console type='pty'/>
  </devices>
</domain>""",
    "lxc-live": """<domain type='lxc' id='4242'>
  <name>c2</name>
  <uuid>6f4b8e2a-3a1c-4c4e-9d55-6c2f1e0b7a10</uuid>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <resource><partition>/machine</partition></resource>
  <os>
    <type arch='x86_64'>exe</type>
    <init>/sbin/init</init>
    <initarg>--verbose</initarg>
    <initenv name='LANG'>C</initenv>
  </os>
  <idmap><uid start='0' target='100000' count='65536'/><gid start='0' target='100000' count='65536'/></idmap>
  <features><privnet/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/lib/libvirt/libvirt_lxc</emulator>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/srv/root'/>
      <target dir='/'/>
    </filesystem>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>
      <ip address='10.99.0.2' family='ipv4' prefix='24'/>
      <target dev='veth0'/>
      <guest dev='eth0'/>
    </interface>
    <console type='pty' tty='/dev/pts/5'>
      <source path='/dev/pts/5'/>
      <target type='lxc' port='0'/>
      <alias name='console0'/>
    </console>
  </devices>
  <seclabel type='none'/>
</domain>""",
}


@pytest.mark.parametrize("name", sorted(LXC_DOMAINS))
def test_lxc_domains_validate_against_both_schemas(name: str) -> None:
    root = parse(LXC_DOMAINS[name])
    assert libvirt_errors(root, "domain") is None
    assert schema.errors(root, "domain") is None


@pytest.mark.parametrize("path", DOMAIN_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_domain_corpus_validates_against_both_schemas(path: Path) -> None:
    root = etree.parse(str(path)).getroot()
    assert schema.errors(root, "domain") is None
    if path.name not in NEWER_THAN_LIBVIRT_9_0:
        assert libvirt_errors(root, "domain") is None


SNAPSHOT = ("<domainsnapshot><name>s1</name><state>running</state>"
            "<creationTime>1700000000</creationTime><memory snapshot='internal'/>"
            "<disks><disk name='vda' snapshot='internal'/></disks>"
            + (DATA / "xml2xml/domain/in/test-default.xml").read_text()
            + "<active>0</active></domainsnapshot>")


SECRET = ("<secret ephemeral='no' private='yes'><uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid>"
          "<description>iSCSI login</description><usage type='iscsi'><target>libvirtiscsi</target>"
          "</usage></secret>")
BOND = ("<interface type='bond' name='bond0'><start mode='none'/>"
        "<protocol family='ipv6'><autoconf/></protocol><bond mode='active-backup'>"
        "<miimon freq='100' updelay='10' carrier='ioctl'/>"
        "<interface type='ethernet' name='eth1'><mac address='52:54:00:00:00:01'/></interface>"
        "<interface type='ethernet' name='eth2'/></bond></interface>")


@pytest.mark.parametrize("text,kind", [(NETWORK, "network"), (POOL, "storagepool"),
                                       (VOLUME, "storagevol"), (SNAPSHOT, "domainsnapshot"),
                                       (BOND, "interface"), (SECRET, "secret")])
def test_object_documents_validate_against_both_schemas(text: str, kind: str) -> None:
    assert schema.errors(parse(text), kind) is None
    assert libvirt_errors(parse(text), kind) is None


def test_formatted_models_validate_against_both_schemas() -> None:
    """What the models write back (dumpxml's text) is valid for both."""
    for path in DOMAIN_FILES:
        d = domain.parse(path.read_text())
        domain.fill_defaults(d, default_arch="x86_64")
        out = parse(domain.format(d, dom_id=3))
        assert schema.errors(out, "domain") is None, path
    cases = [(network.format(network.parse(NETWORK)), "network"),
             (storage.format_pool(storage.parse_pool(POOL)), "storagepool"),
             (storage.format_volume(storage.parse_volume(VOLUME, "dir")), "storagevol")]
    for text, kind in cases:
        assert schema.errors(parse(text), kind) is None
        assert libvirt_errors(parse(text), kind) is None


MINIMAL = ("<domain type='test'><name>v</name><memory>1024</memory>"
           "<os><type>hvm</type></os>{}</domain>")

# Invalid documents and the messages libvirt 9.0's domain.rng gives for them.
INVALID_DOMAINS = {
    "unknown-top-element": (MINIMAL.format("<bogus/>"),
                            ["Element domain has extra content: bogus"]),
    "bad-lifecycle-value": (MINIMAL.format("<on_poweroff>explode</on_poweroff>"),
                            ["Extra element on_poweroff in interleave",
                             "Invalid sequence in interleave",
                             "Element domain failed to validate content"]),
    "bad-disk-device": (MINIMAL.format(
        "<devices><disk type='file' device='floppyx'><source file='/tmp/x'/>"
        "<target dev='vda'/></disk></devices>"),
        ["Extra element devices in interleave", "Element domain failed to validate content"]),
}


@pytest.mark.parametrize("name", sorted(INVALID_DOMAINS))
def test_invalid_domain_refused_like_libvirts_schema(name: str) -> None:
    text, expected = INVALID_DOMAINS[name]
    assert libvirt_errors(parse(text), "domain") == expected
    assert schema.errors(parse(text), "domain") == expected
    with pytest.raises(VirError) as exc:
        domain.parse(text, validate_schema=True)
    err = exc.value
    assert (err.code, err.domain) == (P.VIR_ERR_XML_INVALID_SCHEMA, P.VIR_FROM_XML)
    assert err.message == ("XML document failed to validate against schema: Unable to validate "
                           f"doc against {schema.schema_path('domain')}\n"
                           + "".join(line + "\n" for line in expected))
    try:                 # without the flag only the model's own checks apply
        domain.parse(text)
    except VirError as plain:
        assert plain.code != P.VIR_ERR_XML_INVALID_SCHEMA


@pytest.mark.parametrize("path", sorted(DATA.glob("xml2xml/devices/invalid/*.xml")),
                         ids=lambda p: p.name)
def test_invalid_device_corpus_refused_where_libvirts_schema_refuses(path: Path) -> None:
    root = etree.parse(str(path)).getroot()
    ours, theirs = schema.errors(root, "domain"), libvirt_errors(root, "domain")
    if theirs is not None and path.name != "iface-no-network.xml":
        assert ours is not None
    if ours is not None:
        assert theirs is not None, "ours must not be stricter than libvirt's"


@pytest.mark.parametrize("text,kind,expected", [
    ("<network><name>n1</name><bogus/></network>", "network",
     ["Element network has extra content: bogus"]),
    ("<pool type='dir'><name>p1</name><target><path>/tmp</path></target><bogus/></pool>",
     "storagepool", ["Element pool has extra content: bogus"]),
    ("<volume><name>v1</name><capacity>1</capacity><bogus/></volume>", "storagevol",
     ["Expecting an element target, got nothing", "Invalid sequence in interleave",
      "Element volume failed to validate content"]),
    ("<network><name>n1</name><forward mode='warp'/></network>", "network", None),
    ("<pool type='dir'><name>p1</name><target><path>relative</path></target></pool>",
     "storagepool", None),
    ("<secret><usage type='ceph'><volume>/x</volume></usage></secret>", "secret", None),
    ("<secret ephemeral='maybe'/>", "secret", None),
])
def test_invalid_objects_refused(text: str, kind: str, expected: list[str] | None) -> None:
    theirs = libvirt_errors(parse(text), kind)
    ours = schema.errors(parse(text), kind)
    assert theirs is not None and ours is not None
    if expected is not None:
        assert ours == theirs == expected


def test_parse_functions_validate_on_request() -> None:
    bad_net = "<network><name>n1</name><bogus/></network>"
    network.parse(bad_net)
    with pytest.raises(VirError) as exc:
        network.parse(bad_net, validate_schema=True)
    assert exc.value.code == P.VIR_ERR_XML_INVALID_SCHEMA
    assert "Element network has extra content: bogus" in exc.value.message
    with pytest.raises(VirError) as exc:
        storage.parse_pool("<pool type='dir'><name>p</name><bogus/></pool>", validate_schema=True)
    assert exc.value.code == P.VIR_ERR_XML_INVALID_SCHEMA
    bad_vol = "<volume><name>v</name><capacity>1</capacity><bogus/><target/></volume>"
    with pytest.raises(VirError) as exc:
        storage.parse_volume(bad_vol, "dir", validate_schema=True)
    assert exc.value.message.split("\n")[1:-1] == libvirt_errors(parse(bad_vol), "storagevol")


def test_schemas_found_and_compiled_once() -> None:
    assert {p.name for p in schema.schema_dir().glob("*.rng")} >= {
        f"{k}.rng" for k in schema.SCHEMAS}
    assert schema._compiled("domain") is schema._compiled("domain")
