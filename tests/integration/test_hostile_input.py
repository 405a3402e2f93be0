"""Attacks on a real daemon through sizes, strings and XML that clients choose (issue 11).

Each test performs the attack found by hostile testing and checks three
things: the caller gets libvirt's error, the daemon's memory stays bounded,
and a well-behaved client keeps being answered.
"""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc.xdr import decode
from tests.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.test_protocol_robustness import PROC, RawClient

INT_MAX = 2**31 - 1
# A daemon serving test:///default lives in well under this; the attack made
# it allocate about 2 GB per call.
RSS_BOUND_KIB = 400 * 1024

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("hostile") / "pyvirtd")
    yield d
    assert stop_daemon(d) == 0, d.log()
    assert "Traceback" not in d.log()


@pytest.fixture
def good(daemon: RunningDaemon):
    """A well-behaved python-libvirt connection that must keep working."""
    conn = libvirt.open(daemon.uri())
    yield conn
    assert conn.getHostname()
    conn.close()


def rss_kib(d: RunningDaemon) -> int:
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def error_of(client: RawClient, name: str, *fields):
    pkt = client.reply(client.call(name, *fields))
    return client.error(pkt)


def zero_args(name: str):
    """The call's argument struct with every field zero, empty or null."""
    proc = PROC[name]
    return decode(proc.unpack_args, bytes(4096), exact=False)


# ------------------------------------------------------------ sizes

def test_vcpu_memory_bomb_on_the_read_only_socket_is_refused(daemon, good) -> None:
    ro = RawClient(daemon.sock_ro)
    ro.open()
    dom = ro.result("DOMAIN_LOOKUP_BY_NAME", "test")
    before = rss_kib(daemon)
    for _ in range(20):
        err = error_of(ro, "DOMAIN_GET_VCPUS", dom, 1, INT_MAX)
        assert (err.code, err.message) == (
            libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: maxinfo * maplen > REMOTE_CPUMAPS_MAX")
        err = error_of(ro, "DOMAIN_GET_VCPUS", dom, INT_MAX, 1)
        assert err.message == "internal error: maxinfo > REMOTE_VCPUINFO_MAX"
        err = error_of(ro, "DOMAIN_GET_VCPU_PIN_INFO", dom, 1, INT_MAX, 0)
        assert err.message == "internal error: maxinfo * maplen > REMOTE_CPUMAPS_MAX"
        err = error_of(ro, "DOMAIN_GET_VCPU_PIN_INFO", dom, INT_MAX, 1, 0)
        assert err.message == "internal error: ncpumaps > REMOTE_VCPUINFO_MAX"
    # a negative size never reaches the driver
    err = error_of(ro, "DOMAIN_GET_VCPUS", dom, 1, -1)
    assert (err.code, err.message) == (libvirt.VIR_ERR_INVALID_ARG,
                                       "invalid argument: maplen must not be negative")
    # a sane call on the same connection still works, with the host's map size
    info, maps = ro.result("DOMAIN_GET_VCPUS", dom, 2, 1)
    assert len(info) == 2 and len(maps) == 2
    assert rss_kib(daemon) < max(RSS_BOUND_KIB, 2 * before)
    assert good.lookupByName("test").vcpus()
    ro.close()


def _over_limit(name: str, limit) -> object:
    """Arguments whose fields together exceed ``limit`` by the smallest step."""
    args = zero_args(name)
    first, *rest = limit.fields
    values = {first: limit.limit + 1}
    if rest:
        values = {first: 2, rest[0]: limit.limit // 2 + 1}
    fields = {}
    for field, value in values.items():
        fields[field] = [0] * value if isinstance(getattr(args, field), list) else value
    return args._replace(**fields)


LIMITED = sorted((p.name, limit) for p in PROC.values()
                 for limit in P.ARG_LIMITS.get(("remote", p.number), ()))


@pytest.mark.parametrize("name,limit", LIMITED, ids=[f"{n}-{'*'.join(lim.fields)}"
                                                      for n, lim in LIMITED])
def test_every_client_chosen_size_is_bounded(daemon, name: str, limit) -> None:
    """Every size in ARG_LIMITS (generated from the protocol facts) is checked
    before a handler runs, including procedures no driver implements."""
    rw = RawClient(daemon.sock)
    rw.open()
    messages = {lim.message for lim in P.ARG_LIMITS[("remote", PROC[name].number)]}
    pkt = rw.reply(rw.call(name, *_over_limit(name, limit)))
    err = rw.error(pkt)
    assert err.message.removeprefix("internal error: ") in messages, err.message
    assert err.code in (libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_INTERNAL_ERROR)
    # the same connection is still served
    assert rw.result("CONNECT_GET_HOSTNAME")
    rw.close()


def test_list_calls_with_negative_counts_are_refused(daemon, good) -> None:
    rw = RawClient(daemon.sock)
    rw.open()
    for name, field in (("CONNECT_LIST_DEFINED_DOMAINS", "maxnames"),
                        ("CONNECT_LIST_DOMAINS", "maxids"),
                        ("DOMAIN_GET_SCHEDULER_PARAMETERS", "nparams")):
        args = zero_args(name)._replace(**{field: -5})
        err = rw.error(rw.reply(rw.call(name, *args)))
        assert (err.code, err.message) == (
            libvirt.VIR_ERR_INVALID_ARG, f"invalid argument: {field} must not be negative")
    assert rw.result("CONNECT_LIST_DEFINED_DOMAINS", 10) == []
    rw.close()


# ------------------------------------------------------------ strings

def test_strings_that_are_not_utf8_are_an_invalid_argument(daemon, good) -> None:
    rw = RawClient(daemon.sock)
    rw.open()
    # the codec writes lone surrogates back as the raw bytes they stand for
    bad_xml = "<domain type='test'><name>caf\udce9</name></domain>"
    err = rw.error(rw.reply(rw.call("DOMAIN_DEFINE_XML", bad_xml)))
    assert (err.code, err.message) == (libvirt.VIR_ERR_INVALID_ARG,
                                       "invalid argument: string is not valid UTF-8")
    err = rw.error(rw.reply(rw.call("DOMAIN_LOOKUP_BY_NAME", "\udcff\udcfe")))
    assert err.code == libvirt.VIR_ERR_INVALID_ARG
    assert rw.result("CONNECT_GET_HOSTNAME")
    rw.close()
    # before a connection is open too
    fresh = RawClient(daemon.sock)
    assert fresh.result("AUTH_LIST") == [0]
    err = fresh.error(fresh.reply(fresh.call("CONNECT_OPEN", "test:///\udcffdefault", 0)))
    assert err.code == libvirt.VIR_ERR_INVALID_ARG
    fresh.open()
    fresh.close()
    assert "UnicodeEncodeError" not in daemon.log()


# ------------------------------------------------------------ XML

ENTITY_DOMAIN = """<!DOCTYPE domain [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<domain type='test'><name>&secret;</name><memory>1024</memory>
<os><type>hvm</type></os></domain>"""

LAUGHS = "<!DOCTYPE d [" + "".join(
    f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10 if i else "lol"}">' for i in range(9)) + "]>"


def test_xml_with_entities_is_an_xml_error_and_never_read(good) -> None:
    hostname = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else None
    with pytest.raises(libvirt.libvirtError) as exc:
        good.defineXML(ENTITY_DOMAIN)
    assert exc.value.get_error_code() == libvirt.VIR_ERR_XML_ERROR
    assert "entity references are not supported" in str(exc.value)
    if hostname:
        assert hostname not in str(exc.value)
    # the billion laughs, in a network definition
    laughs = LAUGHS + "<network><name>&l8;</name></network>"
    with pytest.raises(libvirt.libvirtError) as exc:
        good.networkDefineXML(laughs)
    assert exc.value.get_error_code() in (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL)
    assert "internal error" not in str(exc.value)


def test_network_update_with_an_entity_is_an_xml_error(good) -> None:
    net = good.networkLookupByName("default")
    xml = '<!DOCTYPE h [<!ENTITY x "y">]><host mac="52:54:00:00:00:99" name="&x;" ip="192.168.122.99"/>'
    with pytest.raises(libvirt.libvirtError) as exc:
        net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                   libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, 0, xml,
                   libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG)
    assert exc.value.get_error_code() == libvirt.VIR_ERR_XML_ERROR
    # the error path that names the wrong element uses the same parser
    with pytest.raises(libvirt.libvirtError) as exc:
        net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                   libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, 0, "<x>&undefined;</x>",
                   libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG)
    assert exc.value.get_error_code() in (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL)
    assert "internal error" not in str(exc.value)
    assert "192.168.122.99" not in net.XMLDesc()


def test_find_storage_pool_sources_with_bad_xml_is_an_xml_error(good) -> None:
    for spec in ("<source><host name='&x;'/></source>", "<source><host"):
        with pytest.raises(libvirt.libvirtError) as exc:
            good.findStoragePoolSources("netfs", spec, 0)
        assert exc.value.get_error_code() in (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL)
        assert "internal error" not in str(exc.value)
    # a good specification still works
    assert "<host name='h1'/>" in good.findStoragePoolSources(
        "netfs", "<source><host name='h1'/></source>", 0).replace('"', "'")

