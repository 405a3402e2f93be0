"""Fixtures of the ESX tests: govmomi's vSphere simulator (vcsim, a stand-in for an ESX
host, which cannot run here) and a pyvirtd whose configuration names it.

Each test gets its own simulator (it starts in well under a second; power
operations change its state) and its own daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from esx_helpers import ENDPOINT, EsxSetup, endpoint_config, write_credentials

from tests.conftest import start_daemon, stop_daemon
from tests.vcsim.server import Vcsim, start_vcsim


@pytest.fixture
def vcsim(tmp_path: Path):
    """The simulator in its ESX model, TLS with a test CA, credentials required."""
    sim = start_vcsim(tmp_path / "vcsim", model="esx")
    yield sim
    sim.stop()


@pytest.fixture
def esx(tmp_path: Path, vcsim: Vcsim):
    """pyvirtd with endpoint ``lab`` = the simulator (CA-verified TLS)."""
    cred = write_credentials(tmp_path / "lab-credentials.yaml", vcsim.username, vcsim.password)
    config = "esx_endpoints:\n" + endpoint_config(ENDPOINT, vcsim, cred, ca_file=vcsim.ca_file)
    d = start_daemon(tmp_path / "pyvirtd", config=config)
    yield EsxSetup(vcsim, d, cred)
    stop_daemon(d)
