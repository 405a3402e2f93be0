"""The lab VM harness (host side): one boot per test session, shared by every
host-side lab test (tests/lab/test_lab.py), which reports each inside test's
outcome.  tests/lab/inside/ runs only in the guest (LAB_GUEST=1, set by
tests/lab/guest_job.sh); on the host it is not collected.
"""

from __future__ import annotations

import os

import pytest

if not os.environ.get("LAB_GUEST"):
    collect_ignore = ["inside"]


@pytest.fixture(scope="session")
def lab_result():
    """The results of the one lab run of this session (skips when the lab cannot run)."""
    from tests.lab.runner import LabUnavailable, run_lab

    if os.environ.get("PYVIRTD_NO_LAB"):
        pytest.skip("PYVIRTD_NO_LAB is set")
    try:
        return run_lab(log=lambda msg: print(f"[lab] {msg}", flush=True))
    except LabUnavailable as exc:
        pytest.skip(f"lab VM unavailable: {exc}")
