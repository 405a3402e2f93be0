"""The lab harness's reading of the guest's junit report (tests/lab/runner.py)."""

from __future__ import annotations

from pathlib import Path

from tests.lab.runner import parse_junit

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.lab.inside.test_a" name="test_plain"/>
  <testcase classname="tests.lab.inside.test_b" name="test_modes[vepa]"/>
  <testcase classname="tests.lab.inside.test_b" name="test_modes[bridge]">
    <failure message="boom">trace</failure>
  </testcase>
  <testcase classname="tests.lab.inside.test_b" name="test_modes[private]"/>
  <testcase classname="tests.lab.inside.test_c" name="test_all_pass[1]"/>
  <testcase classname="tests.lab.inside.test_c" name="test_all_pass[2]"/>
</testsuite></testsuites>
"""


def test_parametrized_variants_fold_into_their_test(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    out = parse_junit(path)
    assert set(out) == {"test_a::test_plain", "test_b::test_modes", "test_c::test_all_pass"}
    assert out["test_a::test_plain"][0] == "passed"
    outcome, text = out["test_b::test_modes"]
    assert outcome == "failed" and "test_modes[bridge]" in text and "boom" in text
    assert out["test_c::test_all_pass"][0] == "passed"
