"""The README's install section, as `tools/check_readme_install.py` reads it (CI runs it for
real in a fresh clone; here only what it would run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_install_section_installs_from_the_clone():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "check_readme_install.py"), "--dry-run"],
                            capture_output=True, text=True, check=True)
    commands = result.stdout.splitlines()
    assert "pip install torch==2.13.0" in commands  # the PyTorch index line, swapped
    assert "pip install ." in commands and commands[-1] == "spiga --version"
    assert not [c for c in commands if c.startswith(("git clone", "cd "))]
    # the PyPI form belongs in prose until the package is released
    assert not [c for c in commands if "spiga-landmarks" in c.split("#")[0] and c.startswith("pip install")]
