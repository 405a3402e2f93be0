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


def _generator():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_protocol_ro", REPO / "tools" / "gen_protocol.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("acl, expected", [
    ((), (True, 0)),                                               # AUTH_LIST
    (("connect:getattr",), (True, 0)),
    (("connect:search_domains", "domain:getattr"), (True, 0)),
    (("domain:write",), (False, 0)),
    # DOMAIN_GET_XML_DESC: only the secure flag is refused; migratable passes
    (("domain:read", "domain:read_secure:VIR_DOMAIN_XML_SECURE",
      "domain:read_secure:VIR_DOMAIN_XML_MIGRATABLE"), (True, 1)),
    (("domain:read", "domain:write:VIR_DOMAIN_VCPU_GUEST"), (True, 8)),  # GET_VCPUS_FLAGS
    # negated and parameter conditions count as unconditional
    (("domain:read", "domain:save:!VIR_DOMAIN_AFFECT_CONFIG|VIR_DOMAIN_AFFECT_LIVE"), (False, 0)),
    (("domain:read", "domain:write::source:VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT"), (False, 0)),
])
def test_read_only_access(acl, expected) -> None:
    assert _generator().read_only_access(acl) == expected


def test_generator_usage_error() -> None:
    p = subprocess.run([sys.executable, str(REPO / "tools" / "gen_protocol.py")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "Usage" in p.stderr
