"""The lab VM's results, one host-side test per inside test (tests/lab/inside/).

The VM boots once per session (tests/lab/conftest.py); each test here looks
up its inside test's outcome in the guest's junit report and fails with the
guest's own failure text.
"""

from __future__ import annotations

import pytest

from tests.lab.runner import inside_test_ids


@pytest.mark.parametrize("inside", inside_test_ids())
def test_in_lab(lab_result, inside: str) -> None:
    got = lab_result.outcomes.get(inside)
    if got is None:
        pytest.fail(f"{inside} did not run in the lab VM\n{lab_result.summary()}")
    outcome, text = got
    if outcome == "skipped":
        pytest.skip(f"skipped in the lab VM: {text.strip()}")
    if outcome != "passed":
        pytest.fail(f"{inside} {outcome} in the lab VM:\n{text}", pytrace=False)
