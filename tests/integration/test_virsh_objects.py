"""virsh against pyvirtd vs. virsh against libvirt's own test driver: networks,
storage pools and volumes, interfaces, node devices, secrets.

Each scenario is one virsh invocation of several ';'-separated commands, run
once in-process by libvirt's own test driver (the reference) and once against
one pyvirtd shared by the module, both on ``test:///TMP/default.xml``: a private
copy of test:///default's node file, which the test driver loads afresh for
every connection (for these scenarios libvirt prints the same for it as for
test:///default).  stdout, stderr and the exit code must be equal once the only
legitimate differences are normalised: the URI string and UUIDs generated at
definition time (replaced by placeholders in order of first appearance).

Secrets are the exception: libvirt's test driver has no secret driver, but
through libvirtd a test:/// connection gets the daemon's secret driver, which
is what pyvirtd reproduces; those scenarios compare against expected text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_NODE, private_test_uri, virsh

DEFAULT_XML = DEFAULT_NODE.read_text()
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# XML files the scenarios refer to as {name}; written to tmp_path.
FILES = {
    "net": """<network>
  <name>newnet</name>
  <bridge name='virbr5'/>
  <ip address='192.168.150.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.150.2' end='192.168.150.254'/></dhcp>
  </ip>
</network>
""",
    "net7": """<network>
  <name>newnet</name>
  <bridge name='virbr7'/>
</network>
""",
    "net_full": """<network ipv6='yes'>
  <ip netmask='255.255.255.0' address='10.0.0.1'><dhcp><host ip='10.0.0.5' name='a' mac='52:54:00:AA:00:01'/><range end='10.0.0.9' start='10.0.0.2'/></dhcp><tftp root='/srv'/></ip>
  <bridge delay='3' name='br9'/>
  <mac address='52:54:00:00:11:22'/>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <domain name='example.com'/>
  <forward mode='route' dev='eth0'/>
  <name>n1</name>
  <mtu size='9000'/>
</network>
""",
    "net_min": "<network><name>x</name></network>\n",
    "net_bridge": "<network><name>br</name><forward mode='bridge'/><bridge name='br0'/></network>\n",
    "net_dup": "<network><name>default</name></network>\n",
    "net_dupuuid": "<network><name>other</name><uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid></network>\n",
    "net_noname": "<network><bridge name='virbr9'/></network>\n",
    "malformed": "<domain type='test'>\n  <name>bad</name>\n  <memory>524288</memory>\n",
    "unclosed": "<network",
    "attr_err": "<network>\n  <name>x</name>\n  <bridge name='a' x=/>\n</network>\n",
    "empty": "",
    "wrongroot": "<pool type='dir'><name>p</name></pool>\n",
    "host": "<host mac='52:54:00:00:00:01' name='h1' ip='192.168.122.50'/>\n",
    "pool": "<pool type='dir'>\n  <name>xmlpool</name>\n  <target><path>/tmp/xmlpool</path></target>\n</pool>\n",
    "pool_notarget": "<pool type='dir'><name>a</name></pool>\n",
    "pool_notype": "<pool><name>a</name><target><path>/x</path></target></pool>\n",
    "pool_fs": """<pool type='fs'>
  <name>fspool</name>
  <uuid>22222222-2222-3333-4444-555555555555</uuid>
  <source><device path='/dev/sdb1'/><format type='ext4'/></source>
  <target><path>/mnt/fs</path><permissions><mode>0755</mode><owner>0</owner><group>0</group></permissions></target>
</pool>
""",
    "pool_iscsi": """<pool type='iscsi'>
  <name>iscsipool</name>
  <source><host name='iscsi.example.com' port='3260'/><device path='iqn.2024-01.com.example:t1'/></source>
  <target><path>/dev/disk/by-path</path></target>
</pool>
""",
    "vol": "<volume>\n  <name>xmlvol.img</name>\n  <capacity unit='MiB'>100</capacity>\n  <target><format type='raw'/></target>\n</volume>\n",
    "vol_qcow": """<volume type='file'>
  <name>q.qcow2</name>
  <capacity unit='G'>2</capacity>
  <allocation>0</allocation>
  <target><format type='qcow2'/><permissions><mode>0600</mode></permissions></target>
</volume>
""",
    "vol_nocap": "<volume><name>nocap</name></volume>\n",
    "vol_slash": "<volume><name>a/b</name><capacity>1024</capacity></volume>\n",
    "iface": """<interface type='ethernet' name='eth2'>
  <start mode='onboot'/>
  <mac address='aa:bb:cc:dd:ee:00'/>
  <protocol family='ipv4'>
    <dhcp/>
  </protocol>
</interface>
""",
    "iface_noname": "<interface type='ethernet'/>\n",
    "iface_notype": "<interface name='x'/>\n",
    "nodedev": """<device>
  <parent>scsi_host1</parent>
  <capability type='scsi_host'>
    <capability type='fc_host'>
      <wwnn>2000000012345678</wwnn>
      <wwpn>1000000012345678</wwpn>
    </capability>
  </capability>
</device>
""",
}

N = "echo MARK"


def _s(*cmds: str) -> str:
    return f"; {N}; ".join(cmds)


SCENARIOS = {
    # ---- networks -----------------------------------------------------------
    "net-list": _s("net-list", "net-list --all", "net-list --inactive", "net-list --name",
                   "net-list --uuid", "net-list --persistent", "net-list --transient",
                   "net-list --autostart", "net-list --no-autostart", "net-list --table"),
    "net-info": _s("net-info default", "net-info dd8fe884-6c02-601e-7551-cca97df1c5df",
                   "net-uuid default", "net-name dd8fe884-6c02-601e-7551-cca97df1c5df"),
    "net-dumpxml": _s("net-dumpxml default", "net-dumpxml --inactive default",
                      "net-dumpxml default --xpath //ip"),
    "net-errors": _s("net-info nosuch", "net-dumpxml nosuch", "net-uuid nosuch",
                     "net-name 11111111-2222-3333-4444-555555555555", "net-start default",
                     "net-undefine nosuch", "net-undefine default", "net-destroy nosuch",
                     "net-autostart nosuch"),
    "net-unsupported": _s("net-dhcp-leases default", "net-port-list default",
                          "net-port-create default /dev/null", "net-event --list"),
    "net-define-lifecycle": _s(
        "net-define {net}", "net-list --all", "net-info newnet", "net-dumpxml newnet",
        "net-start newnet", "net-list --all", "net-dumpxml newnet", "net-autostart newnet",
        "net-list --all", "net-autostart newnet --disable", "net-destroy newnet",
        "net-list --all", "net-undefine newnet", "net-list --all"),
    "net-create-transient": _s(
        "net-create {net}", "net-list --all", "net-info newnet", "net-undefine newnet",
        "net-autostart newnet", "net-destroy newnet", "net-list --all", "net-info newnet"),
    "net-running-undefine": _s(
        "net-define {net}", "net-start newnet", "net-undefine newnet", "net-list --all",
        "net-define {net7}", "net-destroy newnet", "net-list --all"),
    "net-destroy-default": _s("net-destroy default", "net-destroy default", "net-list --all",
                              "net-info default", "net-start default", "net-list --all",
                              "net-autostart default", "net-list --autostart"),
    "net-define-shapes": _s("net-define {net_full}", "net-dumpxml n1", "net-info n1",
                            "net-define {net_min}", "net-dumpxml x", "net-info x",
                            "net-define {net_bridge}", "net-dumpxml br", "net-info br",
                            "net-list --all --name"),
    "net-define-errors": _s("net-define {net_dup}", "net-create {net_dup}",
                            "net-define {net_dupuuid}", "net-define {net_noname}",
                            "net-define {malformed}", "net-define {unclosed}",
                            "net-define {attr_err}", "net-define {empty}",
                            "net-define {wrongroot}"),
    "net-update-host": _s(
        "net-update default add ip-dhcp-host {host} --live --config", "net-dumpxml default",
        "net-update default add ip-dhcp-host {host}",
        "net-update default add ip-dhcp-host \"<host mac='52:54:00:00:00:01' name='h2' ip='192.168.122.51'/>\"",
        "net-update default modify ip-dhcp-host \"<host mac='52:54:00:00:00:01' name='h3' ip='192.168.122.52'/>\"",
        "net-dumpxml default",
        "net-update default modify ip-dhcp-host \"<host mac='52:54:00:00:00:09' name='h3' ip='192.168.122.52'/>\"",
        "net-update default delete ip-dhcp-host \"<host mac='52:54:00:00:00:01'/>\"",
        "net-update default add ip-dhcp-host \"<hostx mac='52:54:00:00:00:01'/>\"",
        "net-update default add-first ip-dhcp-host \"<host ip='192.168.122.9' mac='52:54:00:00:00:02' name='z'/>\"",
        "net-dumpxml default",
        "net-update default delete ip-dhcp-host \"<host mac='52:54:00:00:00:02' name='z' ip='192.168.122.9'/>\"",
        "net-update default modify ip-dhcp-host \"<host mac='52:54:00:00:00:07' name='q' ip='192.168.122.77'/>\"",
        "net-dumpxml default"),
    "net-update-config": _s(
        "net-update default add ip-dhcp-host {host} --config", "net-dumpxml default",
        "net-define {net}", "net-update newnet add ip-dhcp-host {host} --live",
        "net-update newnet add ip-dhcp-host {host}", "net-dumpxml newnet",
        "net-create {net_min}", "net-update x add ip-dhcp-host {host} --config",
        "net-update x add ip-dhcp-host {host}", "net-update nosuch add ip-dhcp-host {host}"),
    "net-update-other": _s(
        "net-update default add ip-dhcp-range \"<range start='192.168.122.100' end='192.168.122.120'/>\"",
        "net-update default add ip-dhcp-range \"<range start='192.168.122.100' end='192.168.122.120'/>\"",
        "net-dumpxml default",
        "net-update default modify ip-dhcp-range \"<range start='192.168.122.100' end='192.168.122.120'/>\"",
        "net-update default delete ip-dhcp-range \"<range start='192.168.122.100' end='192.168.122.120'/>\"",
        "net-update default delete ip-dhcp-range \"<range start='192.168.122.100' end='192.168.122.120'/>\"",
        "net-update default add bridge \"<bridge name='x'/>\"",
        "net-update default add dns-host \"<host ip='1.2.3.4'><hostname>a</hostname></host>\"",
        "net-dumpxml default"),
    # ---- storage pools ------------------------------------------------------
    "pool-list": _s("pool-list", "pool-list --all", "pool-list --all --details",
                    "pool-list --inactive", "pool-list --name", "pool-list --uuid",
                    "pool-list --type dir", "pool-list --type logical", "pool-list --persistent",
                    "pool-list --transient", "pool-list --autostart", "pool-list --no-autostart"),
    "pool-info": _s("pool-info default-pool", "pool-info dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566",
                    "pool-info default-pool --bytes", "pool-dumpxml default-pool",
                    "pool-dumpxml --inactive default-pool", "pool-uuid default-pool",
                    "pool-name dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566", "pool-refresh default-pool",
                    "pool-event --list"),
    "pool-unsupported": _s("pool-capabilities", "find-storage-pool-sources logical",
                           "find-storage-pool-sources netfs", "find-storage-pool-sources dir",
                           "find-storage-pool-sources-as logical"),
    "pool-errors": _s("pool-info nosuch", "pool-dumpxml nosuch", "pool-start default-pool",
                      "pool-undefine default-pool", "pool-delete default-pool",
                      "pool-build default-pool",
                      "pool-define-as default-pool dir --target /tmp/x",
                      "pool-define-as newpool bogustype --target /tmp/x",
                      "pool-name 11111111-2222-3333-4444-555555555555",
                      "pool-define {pool_notarget}", "pool-define {pool_notype}",
                      "pool-define {malformed}", "pool-define {wrongroot}",
                      "pool-create {empty}", "vol-list nosuch", "vol-create-as nosuch v 1G"),
    "pool-define-lifecycle": _s(
        "pool-define-as newpool dir --target /tmp/newpool", "pool-list --all --details",
        "pool-info newpool", "pool-dumpxml newpool", "pool-build newpool", "pool-start newpool",
        "pool-list --all --details", "pool-info newpool", "pool-autostart newpool",
        "pool-info newpool", "vol-create-as newpool a.img 1M", "vol-list newpool --details",
        "vol-dumpxml a.img --pool newpool", "pool-destroy newpool", "pool-list --all",
        "pool-delete newpool", "pool-list --all", "pool-undefine newpool", "pool-list --all"),
    "pool-create-transient": _s(
        "pool-create-as tpool dir --target /tmp/tpool", "pool-list --all --details",
        "pool-info tpool", "pool-autostart tpool", "pool-destroy tpool", "pool-list --all"),
    "pool-define-xml": _s("pool-define {pool}", "pool-dumpxml xmlpool", "pool-start xmlpool",
                          "pool-info xmlpool", "pool-define {pool_fs}", "pool-dumpxml fspool",
                          "pool-define {pool_iscsi}", "pool-dumpxml iscsipool",
                          "pool-list --all --type fs"),
    "pool-define-as-types": _s(
        "pool-define-as lvpool logical --source-name vg0 --target /dev/vg0",
        "pool-dumpxml lvpool", "pool-start lvpool", "pool-info lvpool",
        "pool-define-as nfspool netfs --source-host nfs.example.com --source-path /export --target /mnt/nfs",
        "pool-dumpxml nfspool", "pool-list --all --type netfs,logical"),
    "pool-running-undefine": _s(
        "pool-define-as newpool dir --target /tmp/newpool", "pool-start newpool",
        "pool-undefine newpool", "pool-list --all", "pool-destroy newpool", "pool-list --all",
        "pool-define-as newpool dir --target /tmp/other", "pool-dumpxml newpool"),
    "pool-destroy-default": _s(
        "pool-destroy default-pool", "pool-destroy default-pool", "pool-list --all --details",
        "pool-info default-pool", "vol-list default-pool", "vol-create-as default-pool v 1G",
        "pool-delete default-pool", "pool-undefine default-pool", "pool-list --all"),
    "pool-autostart": _s("pool-autostart default-pool", "pool-info default-pool",
                         "pool-list --autostart", "pool-autostart default-pool --disable",
                         "pool-list --autostart"),
    # ---- volumes ------------------------------------------------------------
    "vol-list-empty": _s("vol-list default-pool", "vol-list default-pool --details",
                         "vol-list --pool default-pool"),
    "vol-create-info": _s(
        "vol-create-as default-pool vol1.img 1G",
        "vol-create-as default-pool vol2.qcow2 512M --format qcow2 --allocation 10M",
        "vol-list default-pool --details", "vol-info vol1.img --pool default-pool",
        "vol-info vol2.qcow2 --pool default-pool", "vol-info --bytes vol1.img --pool default-pool",
        "vol-dumpxml vol1.img --pool default-pool", "vol-dumpxml vol2.qcow2 --pool default-pool",
        "vol-path vol1.img --pool default-pool", "vol-key vol1.img --pool default-pool",
        "vol-name /default-pool/vol1.img", "vol-pool /default-pool/vol1.img",
        "vol-pool --uuid /default-pool/vol1.img", "vol-info /default-pool/vol1.img",
        "pool-info default-pool", "pool-dumpxml default-pool", "pool-list --details"),
    "vol-clone": _s("vol-create-as default-pool vol1.img 1G",
                    "vol-clone vol1.img vol1-clone.img --pool default-pool",
                    "vol-clone vol1.img vol1-clone.img --pool default-pool",
                    "vol-list default-pool --details",
                    "vol-dumpxml vol1-clone.img --pool default-pool",
                    "vol-create-from default-pool {vol} vol1.img",
                    "vol-create-from default-pool {vol} vol1.img --inputpool default-pool",
                    "vol-list default-pool --details", "pool-info default-pool"),
    "vol-unsupported": _s("vol-create-as default-pool vol1.img 1G",
                          "vol-resize vol1.img 2G --pool default-pool",
                          "vol-wipe vol1.img --pool default-pool",
                          "vol-wipe vol1.img --pool default-pool --algorithm zero",
                          "vol-upload vol1.img /dev/null --pool default-pool",
                          "vol-info vol1.img --pool default-pool"),
    "vol-delete": _s("vol-create-as default-pool vol1.img 1G",
                     "vol-delete vol1.img --pool default-pool", "vol-list default-pool",
                     "vol-delete vol1.img --pool default-pool",
                     "vol-create-as default-pool vol2.img 1G", "vol-delete /default-pool/vol2.img",
                     "vol-list default-pool", "pool-info default-pool"),
    "vol-create-xml": _s("vol-create default-pool {vol}", "vol-list default-pool --details",
                         "vol-dumpxml xmlvol.img --pool default-pool",
                         "vol-create default-pool {vol_qcow}",
                         "vol-dumpxml q.qcow2 --pool default-pool",
                         "vol-create default-pool {vol_slash}", "vol-list default-pool",
                         "vol-create default-pool {vol_nocap}", "vol-create default-pool {wrongroot}",
                         "vol-create default-pool {malformed}", "vol-create default-pool {vol}"),
    "vol-errors": _s("vol-create-as default-pool vol1.img 1G",
                     "vol-create-as default-pool vol1.img 1G",
                     "vol-create-as default-pool toobig 1000G",
                     "vol-create-as default-pool badfmt 1G --format bogus",
                     "vol-info nosuch --pool default-pool", "vol-info nosuch",
                     "vol-info /nonexistent/path", "vol-dumpxml nosuch --pool default-pool",
                     "vol-key nosuch --pool default-pool", "vol-delete nosuch --pool default-pool"),
    "vol-full-pool": _s("vol-create-as default-pool vol3 100G", "vol-create-as default-pool vol4 1G",
                        "pool-info default-pool", "vol-list default-pool --details"),
    "vol-inactive-pool": _s("vol-create-as default-pool vol1.img 1G", "pool-destroy default-pool",
                            "vol-list default-pool", "vol-info vol1.img --pool default-pool",
                            "vol-info /default-pool/vol1.img", "pool-start default-pool",
                            "vol-list default-pool"),
    # ---- interfaces ---------------------------------------------------------
    "iface-list": _s("iface-list", "iface-list --all", "iface-list --inactive",
                     "iface-dumpxml eth1", "iface-dumpxml eth1 --inactive", "iface-mac eth1",
                     "iface-name aa:bb:cc:dd:ee:ff"),
    "iface-lifecycle": _s("iface-define {iface}", "iface-list --all", "iface-dumpxml eth2",
                          "iface-start eth2", "iface-list --all", "iface-destroy eth2",
                          "iface-list --all", "iface-undefine eth2", "iface-list --all"),
    "iface-destroy-start": _s("iface-destroy eth1", "iface-destroy eth1", "iface-list --all",
                              "iface-start eth1", "iface-start eth1", "iface-list --all"),
    "iface-transaction": _s("iface-begin", "iface-begin", "iface-define {iface}",
                            "iface-list --all", "iface-rollback", "iface-list --all",
                            "iface-begin", "iface-define {iface}", "iface-commit",
                            "iface-list --all", "iface-rollback", "iface-commit"),
    "iface-errors": _s("iface-dumpxml nosuch", "iface-mac nosuch",
                       "iface-name 00:00:00:00:00:00", "iface-bridge eth1 br0",
                       "iface-unbridge br0", "iface-define {malformed}",
                       "iface-define {wrongroot}", "iface-define {iface_noname}",
                       "iface-define {iface_notype}", "iface-define {iface}",
                       "iface-define {iface}", "iface-list --all", "iface-undefine eth1",
                       "iface-list --all"),
    # ---- node devices -------------------------------------------------------
    "nodedev-list": _s("nodedev-list", "nodedev-list --all", "nodedev-list --tree",
                       "nodedev-list --cap system", "nodedev-list --inactive"),
    "nodedev-dumpxml": _s("nodedev-dumpxml computer", "nodedev-dumpxml scsi_host1",
                          "nodedev-dumpxml scsi_host2", "nodedev-dumpxml scsi_host11",
                          "nodedev-info computer", "nodedev-info scsi_host11",
                          "nodedev-event --list"),
    "nodedev-create-destroy": _s("nodedev-create {nodedev}", "nodedev-dumpxml scsi_host12",
                                 "nodedev-destroy scsi_host12", "nodedev-dumpxml scsi_host12",
                                 "nodedev-destroy scsi_host11", "nodedev-dumpxml scsi_host11",
                                 "nodedev-destroy computer", "nodedev-dumpxml computer"),
    "nodedev-errors": _s("nodedev-dumpxml nosuch", "nodedev-destroy nosuch",
                         "nodedev-define {nodedev}", "nodedev-undefine scsi_host11",
                         "nodedev-start scsi_host11", "nodedev-detach scsi_host1",
                         "nodedev-reattach scsi_host1", "nodedev-reset scsi_host1",
                         "nodedev-autostart scsi_host1", "nodedev-create {wrongroot}",
                         "nodedev-create {malformed}"),
}


def _normalise(text: str, uri: str, known: set[str]) -> str:
    text = text.replace(uri, "URI")
    seen: dict[str, str] = {}

    def repl(m: re.Match) -> str:
        u = m.group(0)
        if u in known:
            return u
        return seen.setdefault(u, f"UUID-{len(seen) + 1}")
    return UUID_RE.sub(repl, text)


def _commands(template: str, tmp_path: Path) -> tuple[str, set[str]]:
    files = {}
    for name, body in FILES.items():
        path = tmp_path / f"{name}.xml"
        path.write_text(body)
        files[name] = str(path)
    known = set(UUID_RE.findall(DEFAULT_XML))
    for body in FILES.values():
        known.update(UUID_RE.findall(body))
    known.update(UUID_RE.findall(template))
    return template.format(**files), known


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_matches_reference(name: str, shared_daemon, tmp_path: Path) -> None:
    commands, known = _commands(SCENARIOS[name], tmp_path)
    reference = private_test_uri(tmp_path)
    ref = virsh(reference, commands)
    uri = shared_daemon.uri(reference)
    got = virsh(uri, commands)
    assert _normalise(got.out, uri, known) == _normalise(ref.out, reference, known)
    assert _normalise(got.err, uri, known) == _normalise(ref.err, reference, known)
    assert got.rc == ref.rc


# ---- secrets: the daemon's secret driver, checked against expected text ----------

SECRET_XML = """<secret ephemeral='no' private='no'>
  <uuid>aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee</uuid>
  <usage type='volume'><volume>/var/lib/x.img</volume></usage>
</secret>
"""
UUID_A = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def test_secret_lifecycle(shared_daemon, tmp_path: Path) -> None:
    xml = tmp_path / "secret.xml"
    xml.write_text(SECRET_XML)
    got = virsh(shared_daemon.uri(private_test_uri(tmp_path)), _s(
        f"secret-define {xml}", "secret-list", f"secret-dumpxml {UUID_A}",
        f"secret-get-value {UUID_A}", f"secret-set-value {UUID_A} --base64 c2VjcmV0",
        f"secret-get-value {UUID_A}", f"secret-undefine {UUID_A}", "secret-list",
        f"secret-dumpxml {UUID_A}"))
    # virsh ends each command's output with a blank line; "echo MARK" adds its own line.
    assert got.out.split("MARK\n") == [
        f"Secret {UUID_A} created\n\n",
        " UUID                                   Usage\n"
        "---------------------------------------------------------------\n"
        f" {UUID_A}   volume /var/lib/x.img\n\n",
        "<secret ephemeral='no' private='no'>\n"
        f"  <uuid>{UUID_A}</uuid>\n"
        "  <usage type='volume'>\n    <volume>/var/lib/x.img</volume>\n  </usage>\n"
        "</secret>\n\n",
        "\n",
        "Secret value set\n\n",
        "c2VjcmV0\n",
        f"Secret {UUID_A} deleted\n\n",
        " UUID   Usage\n---------------\n\n",
        "\n",
    ]
    assert got.err == (
        f"error: Secret not found: secret '{UUID_A}' does not have a value\n"
        "error: Passing secret value as command-line argument is insecure!\n"
        f"error: failed to get secret '{UUID_A}'\n"
        f"error: Secret not found: no secret with matching uuid '{UUID_A}'\n")
    assert got.rc == 1


def test_secret_nova_lookups(shared_daemon, tmp_path: Path) -> None:
    """nova looks secrets up by usage and branches on VIR_ERR_NO_SECRET."""
    import libvirt
    conn = libvirt.open(shared_daemon.uri(private_test_uri(tmp_path)))
    try:
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, "client.nova")
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_SECRET
        sec = conn.secretDefineXML(
            "<secret ephemeral='no' private='yes'><usage type='ceph'>"
            "<name>client.nova</name></usage></secret>")
        found = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, "client.nova")
        assert found.UUIDString() == sec.UUIDString()
        assert found.usageID() == "client.nova"
        sec.setValue(b"key")
        with pytest.raises(libvirt.libvirtError) as exc:
            sec.value()
        assert exc.value.get_error_code() == libvirt.VIR_ERR_INVALID_SECRET
        assert [s.UUIDString() for s in conn.listAllSecrets()] == [sec.UUIDString()]
        assert conn.numOfSecrets() == 1
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.secretDefineXML("<secret><usage type='ceph'><name>client.nova</name>"
                                 "</usage></secret>")
        assert exc.value.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
        sec.undefine()
        assert conn.listAllSecrets() == []
    finally:
        conn.close()


def test_nodedev_nova_listing(shared_daemon, tmp_path: Path) -> None:
    """nova lists PCI, net and vDPA devices with one flags word (131090)."""
    import libvirt
    conn = libvirt.open(shared_daemon.uri(private_test_uri(tmp_path)))
    try:
        assert conn.listAllDevices(131090) == []
        names = [d.name() for d in conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_SCSI_HOST)]
        assert sorted(names) == ["scsi_host1", "scsi_host11", "scsi_host2"]
        assert sorted(conn.listDevices("vports")) == ["scsi_host1", "scsi_host2"]
        assert conn.numOfDevices(None) == 4
        assert conn.nodeDeviceLookupByName("scsi_host11").parent() == "scsi_host1"
        assert conn.nodeDeviceLookupByName("computer").parent() is None
    finally:
        conn.close()
