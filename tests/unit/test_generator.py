"""tools/gen_protocol.py reproduces the committed pyvirtd/rpc/_generated.py exactly.

Nobody edits generated code by hand; this catches a hand edit, or a generator
change committed without regenerating (`make gen`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_JSON = REPO.parent / "shared" / "reference" / "libvirt-rpc.json"
GENERATED = REPO / "pyvirtd" / "rpc" / "_generated.py"


@pytest.mark.skipif(not PROTOCOL_JSON.exists(),
                    reason=f"protocol facts {PROTOCOL_JSON} are absent (they live outside the repo)")
def test_generator_reproduces_committed_module(tmp_path: Path) -> None:
    out = tmp_path / "_generated.py"
    subprocess.run([sys.executable, str(REPO / "tools" / "gen_protocol.py"),
                    str(PROTOCOL_JSON), str(out)], check=True, cwd=tmp_path)
    fresh, committed = out.read_bytes(), GENERATED.read_bytes()
    if fresh != committed:
        fresh_lines, old_lines = fresh.splitlines(), committed.splitlines()
        first = next((i for i, (a, b) in enumerate(zip(fresh_lines, old_lines)) if a != b),
                     min(len(fresh_lines), len(old_lines)))
        pytest.fail(f"_generated.py is stale or hand-edited: first difference at line "
                    f"{first + 1}; regenerate with `make gen`")


def test_generator_usage_error() -> None:
    p = subprocess.run([sys.executable, str(REPO / "tools" / "gen_protocol.py")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "Usage" in p.stderr
