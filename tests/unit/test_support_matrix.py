"""docs/support-matrix.md is what tools/support_matrix.py writes today.

The matrix is derived from the dispatch lookup; a driver or subsystem that
gains or loses a method without `make support-matrix` fails here.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("support_matrix", REPO / "tools" / "support_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_committed_matrix_is_current() -> None:
    fresh = _tool().render()
    committed = (REPO / "docs" / "support-matrix.md").read_text()
    if fresh != committed:
        pytest.fail("docs/support-matrix.md is stale; regenerate it with `make support-matrix`")


def test_every_driver_is_in_the_matrix() -> None:
    names = {ep.name for ep in entry_points(group="pyvirtd.drivers")}
    assert names and names <= set(_tool().CONNECTIONS)


def test_matrix_follows_the_lookup() -> None:
    """Spot checks against what the dispatcher resolves."""
    text = _tool().render()
    rows = {line.split(" | ")[1]: line for line in text.splitlines()
            if line.startswith("| ") and line.count(" | ") >= 5}
    assert rows["CONNECT_OPEN"].endswith("| daemon | daemon | daemon |")   # the daemon's own
    assert "| DOMAIN_GET_XML_DESC | virDomainGetXMLDesc | yes | yes | yes |" in text
    # qemu, lxc and uml answer pools through the shared storage subsystem; esx
    # (a remote host's datastores, not this host's pools) does not delegate to it
    assert rows["STORAGE_POOL_LOOKUP_BY_NAME"].endswith("| yes | yes | yes |  |")
    assert "| CONNECT_NUM_OF_NWFILTERS | virConnectNumOfNWFilters |  | yes | yes |" in text
