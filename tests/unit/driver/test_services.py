"""The typed services drivers use (pyvirtd/driver/api.py, ``ctx.services``).

The subsystems are the real ones on a private root (no host changes: a dir
pool in tmp_path, networks defined but not started); what is checked is
that each service is a method of its subsystem with the written parameters,
that the calls answer typed values and libvirt's errors, and that a service
the daemon lacks answers VIR_ERR_NO_SUPPORT in its own error domain.
"""

from __future__ import annotations

import inspect
import typing

import pytest
from lxml import etree

from pyvirtd.config import Config
from pyvirtd.driver import DriverContext, Services, api, shared_subsystems
from pyvirtd.errors import VirError
from pyvirtd.network import NetworkSubsystem
from pyvirtd.nwfilter import NWFilterSubsystem
from pyvirtd.paths import Paths
from pyvirtd.rpc import _generated as P
from pyvirtd.secrets import SecretSubsystem
from pyvirtd.storage import StorageSubsystem
from pyvirtd.xml.networkport import PortDef

IMPLEMENTED_BY = {api.StorageService: StorageSubsystem, api.NetworkService: NetworkSubsystem,
                  api.SecretService: SecretSubsystem, api.NWFilterService: NWFilterSubsystem}
NET_UUID = "9c0e3b1a-0f6d-4c1e-9d59-2a5e5d3e7a11"


def _methods(proto: type) -> dict[str, typing.Callable]:
    return {n: f for n, f in vars(proto).items() if inspect.isfunction(f) and not n.startswith("_")}


@pytest.mark.parametrize("service", api.SERVICES, ids=lambda s: s.__name__)
def test_each_service_is_its_subsystem_with_the_written_parameters(service: type) -> None:
    impl = IMPLEMENTED_BY[service]
    for name, fn in _methods(service).items():
        typing.get_type_hints(fn, globalns=vars(api))           # annotations resolve
        method = getattr(impl, name)
        assert (inspect.signature(method).parameters.keys()
                == inspect.signature(fn).parameters.keys()), name
        assert inspect.iscoroutinefunction(method) == inspect.iscoroutinefunction(fn), name


@pytest.mark.parametrize("attr, name, domain", [
    ("storage", "storage", P.VIR_FROM_STORAGE),
    ("network", "network", P.VIR_FROM_NETWORK),
    ("secrets", "secret", P.VIR_FROM_SECRET),
    ("nwfilter", "nwfilter", P.VIR_FROM_NWFILTER),
])
def test_an_absent_service_is_not_supported(attr: str, name: str, domain: int) -> None:
    with pytest.raises(VirError) as exc:
        getattr(Services(), attr)
    assert (exc.value.code, exc.value.domain) == (P.VIR_ERR_NO_SUPPORT, domain)
    assert exc.value.message == (f"this function is not supported by the connection driver: "
                                 f"{name} subsystem is not available")


@pytest.fixture
def ctx(tmp_path) -> DriverContext:
    c = DriverContext(Config(), Paths.for_root(tmp_path / "daemon"), privileged=False)
    shared_subsystems(c)
    return c


def _code(exc: pytest.ExceptionInfo[VirError]) -> tuple[int, str]:
    return exc.value.code, exc.value.message


async def test_storage_resolves_volumes_by_name(ctx, tmp_path) -> None:
    storage = ctx.services.storage
    target = tmp_path / "images"
    target.mkdir()
    pool = await storage.storage_pool_define_xml(   # as a client would, through the procedures
        f"<pool type='dir'><name>imgs</name><target><path>{target}</path></target></pool>", 0)
    assert storage.pool_is_active("imgs") is False
    with pytest.raises(VirError) as exc:
        storage.resolve_volume("imgs", "a.qcow2")
    assert _code(exc) == (P.VIR_ERR_OPERATION_INVALID,
                          "Requested operation is not valid: storage pool 'imgs' is not active")
    await storage.storage_pool_create(pool, 0)
    await storage.storage_vol_create_xml(
        pool, "<volume><name>a.qcow2</name><capacity unit='bytes'>1048576</capacity>"
              "<target><format type='qcow2'/></target></volume>", 0)

    vol = storage.resolve_volume("imgs", "a.qcow2")
    assert vol == api.StorageVolume("imgs", "a.qcow2", "dir", str(target / "a.qcow2"),
                                    P.StorageVolType.VIR_STORAGE_VOL_FILE, "qcow2")
    assert await storage.refresh_volume("imgs", "a.qcow2") == vol
    assert storage.pool_is_active("imgs") is True

    with pytest.raises(VirError) as exc:
        storage.resolve_volume("imgs", "nope")
    assert exc.value.code == P.VIR_ERR_NO_STORAGE_VOL
    with pytest.raises(VirError) as exc:
        storage.pool_is_active("nopool")
    assert exc.value.code == P.VIR_ERR_NO_STORAGE_POOL


async def test_network_ports_and_leases_by_network_name(ctx) -> None:
    network = ctx.services.network
    await network.network_define_xml(
        f"<network><name>n1</name><uuid>{NET_UUID}</uuid><bridge name='pvtest0'/>"
        "<ip address='192.0.2.1' netmask='255.255.255.0'/></network>")
    assert network.dhcp_leases("n1") == []                      # inactive: none
    with pytest.raises(VirError) as exc:
        network.dhcp_leases("nonet")
    assert exc.value.code == P.VIR_ERR_NO_NETWORK
    port = PortDef(uuid=bytes(16), owner_name="g", owner_uuid=bytes(16), mac="52:54:00:00:00:01")
    with pytest.raises(VirError) as exc:
        await network.create_port("n1", port)
    assert _code(exc) == (P.VIR_ERR_OPERATION_INVALID,
                          "Requested operation is not valid: network 'n1' is not active")
    await network.delete_port("n1", port.uuid)                  # none held: nothing to do


async def test_secret_values_and_filters_for_drivers(ctx) -> None:
    secrets = ctx.services.secrets
    ref = await secrets.secret_define_xml(
        "<secret private='yes'><usage type='iscsi'><target>t1</target></usage></secret>", 0)
    await secrets.secret_set_value(ref, b"pw", 0)
    assert secrets.value_of("iscsi", "t1") == b"pw"
    assert secrets.value_of_uuid(ref.uuid, "iscsi") == b"pw"
    with pytest.raises(VirError) as exc:
        secrets.value_of("iscsi", "other")
    assert exc.value.code == P.VIR_ERR_NO_SECRET

    nwfilter = ctx.services.nwfilter
    plain = etree.fromstring("<interface type='network'><mac address='52:54:00:00:00:02'/>"
                             "<source network='n1'/></interface>")
    await nwfilter.bind_interface("g", bytes(16), plain, "vnet0")   # no <filterref>: nothing
    assert nwfilter.connect_list_all_nwfilter_bindings(1, 0) == ([], 0)
    await nwfilter.unbind_interface("vnet0")                        # had none: fine
