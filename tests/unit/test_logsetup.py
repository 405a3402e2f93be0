"""log_level / log_outputs / log_filters in libvirt's syntax."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pyvirtd import logsetup


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_file_output_with_its_own_level(tmp_path: Path) -> None:
    path = tmp_path / "d.log"
    logsetup.configure(1, f"2:file:{path}")
    logging.getLogger("pyvirtd.x").debug("hidden by the output's level")
    logging.getLogger("pyvirtd.x").info("shown")
    text = path.read_text()
    assert "shown" in text and "hidden" not in text


def test_filter_lowers_the_threshold_for_matching_names(tmp_path: Path) -> None:
    path = tmp_path / "d.log"
    logsetup.configure(4, f"1:file:{path}", "1:pyvirtd.client")
    logging.getLogger("pyvirtd.client").debug("client detail")
    logging.getLogger("pyvirtd.dispatch").warning("below the global level")
    logging.getLogger("pyvirtd.dispatch").error("dispatch error")
    text = path.read_text()
    assert "client detail" in text
    assert "below the global level" not in text
    assert "dispatch error" in text


@pytest.mark.parametrize("outputs", ["stderr", "9:stderr", "1:nowhere", "1:file:"])
def test_bad_outputs_are_refused(outputs: str) -> None:
    with pytest.raises(logsetup.LogSettingError):
        logsetup.configure(3, outputs)


@pytest.mark.parametrize("filters", ["client", "7:client", "1:"])
def test_bad_filters_are_refused(filters: str) -> None:
    with pytest.raises(logsetup.LogSettingError):
        logsetup.configure(3, "", filters)
