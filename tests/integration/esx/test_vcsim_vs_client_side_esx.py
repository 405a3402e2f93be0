"""pyvirtd's ESX driver beside libvirt's own client-side ESX driver, on the same simulator
(vcsim, a stand-in for ESX).

Debian 12's libvirt 9.0 ESX driver cannot talk to Debian 12's govmomi 0.24
simulator at all: its SOAP deserialiser refuses the simulator's replies right
after login ("AnyType is missing 'type' property"; the vpx:// form fails the
same way).  So no output can be compared side by
side here; this test pins that fact, and fails (asking for the side-by-side
comparison to be written) the day either package changes it.

The differences from libvirt's ESX driver that are known by design, and why:

* dumpxml is built from the VM's ``config`` read through the API; libvirt
  downloads the .vmx file from the datastore and maps that.  The elements
  are the same (pyvirtd/drivers/esx/domxml.py); settings that only the .vmx
  has (e.g. ``sched.cpu.shares`` as ``<cputune>``, the MAC's
  generated/static type) are not printed.
* domstate's reason is always 0 ("unknown"), as in libvirt's driver.
* the domain id is the number of the VM's managed object id ("vm-9" -> 9) for
  both; the simulator's ids are vCenter-style.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from esx_helpers import EsxSetup


def test_vcsim_client_side_esx_driver_cannot_parse_the_simulator(esx: EsxSetup,
                                                                 tmp_path: Path) -> None:
    sim = esx.sim
    auth = tmp_path / "auth.conf"
    auth.write_text(f"[credentials-sim]\nauthname={sim.username}\npassword={sim.password}\n"
                    f"[auth-esx-{sim.host}]\ncredentials=sim\n")
    env = dict(os.environ, LIBVIRT_AUTH_FILE=str(auth), LC_ALL="C")
    env.pop("LIBVIRT_DEFAULT_URI", None)
    client_side = f"esx://{sim.username}@{sim.host}:{sim.port}/?no_verify=1"
    r = subprocess.run(["virsh", "-c", client_side, "list --all"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode != 0
    assert "internal error: AnyType is missing 'type' property" in r.stderr
    # the same host through pyvirtd answers
    r = subprocess.run(["virsh", "-c", esx.uri, "list --all"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ha-host_VM0" in r.stdout
