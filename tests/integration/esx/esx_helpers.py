"""Helpers of the ESX tests: the pyvirtd setup, credentials and endpoint config, and the
simulator as pyvmomi sees it directly (the truth the tests compare with)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import RunningDaemon
from tests.vcsim.server import Vcsim

ENDPOINT = "lab"


@dataclass
class EsxSetup:
    sim: Vcsim
    daemon: RunningDaemon
    credentials: Path

    @property
    def uri(self) -> str:
        """The URI stock clients send to pyvirtd for endpoint ``lab``."""
        return f"esx+unix:///{ENDPOINT}?socket={self.daemon.sock}"

    def uri_for(self, endpoint: str) -> str:
        return f"esx+unix:///{endpoint}?socket={self.daemon.sock}"


def write_credentials(path: Path, username: str, password: str, mode: int = 0o600) -> Path:
    path.write_text(f"username: {username}\npassword: {password}\n")
    path.chmod(mode)
    return path


def endpoint_config(name: str, sim: Vcsim, credentials: Path, *, ca_file: Path | None,
                    insecure: bool = False) -> str:
    lines = [f"  - name: {name}", f"    host: {sim.host}", f"    port: {sim.port}",
             f"    credentials_file: {credentials}"]
    if ca_file is not None:
        lines.append(f"    ca_file: {ca_file}")
    if insecure:
        lines.append("    insecure: true")
    return "\n".join(lines) + "\n"


def simulator_view(sim: Vcsim):
    """The simulator as pyvmomi sees it directly (the truth the tests compare with):
    (service instance, content)."""
    from pyVim.connect import SmartConnect

    ctx = ssl.create_default_context(cafile=str(sim.ca_file))
    si = SmartConnect(host=sim.host, port=sim.port, user=sim.username, pwd=sim.password,
                      sslContext=ctx)
    return si, si.RetrieveContent()


def simulator_vms(content) -> dict:
    from pyVmomi import vim

    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return {vm.name: vm for vm in view.view}
    finally:
        view.Destroy()

