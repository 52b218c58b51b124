"""The distribution: its name and version, install hints, and the refusal to share an
environment with the original SPIGA package (both provide the module `spiga`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import spiga
from spiga import about

REPO = Path(__file__).resolve().parents[1]


def test_version_lives_in_one_place():
    assert spiga.__version__ == about.__version__
    assert metadata.version(about.DISTRIBUTION) == about.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'name = "{about.DISTRIBUTION}"' in pyproject and 'dynamic = ["version"]' in pyproject


def test_install_hints_name_this_distribution():
    """No message, docstring or document tells users to install the PyPI project `spiga`
    (the original authors' package)."""
    wrong = re.compile(r"pip install\s+(-U\s+)?['\"]?spiga(\[|['\"\s]|$)")
    offenders = []
    for folder in ("src", "docs", "examples", "speed", "tools"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".txt", ".html", ".js", ".yml", ".toml") and path.is_file():
                for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    if wrong.search(line) and "uninstall" not in line:
                        offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    readme = (REPO / "README.md").read_text()
    offenders += [f"README.md: {line}" for line in readme.splitlines() if wrong.search(line)]
    assert not offenders, "\n".join(offenders)
    # not on PyPI yet: from a clone, and the PyPI form it will take
    hint = about.install_hint("serve")
    assert "pip install '.[serve]'" in hint and f"pip install '{about.DISTRIBUTION}[serve]'" in hint


def test_no_mixed_installation_here():
    assert about.mixed_installation() is None


def test_the_original_packages_metadata_is_refused(monkeypatch):
    real = metadata.version

    def version(name: str) -> str:
        return "0.0.6" if name == about.ORIGINAL_DISTRIBUTION else real(name)

    monkeypatch.setattr(metadata, "version", version)
    with pytest.raises(ImportError, match="pip uninstall -y spiga spiga-landmarks"):
        about.check_installation()


def test_the_original_packages_files_beside_ours_are_refused(tmp_path):
    """A wheel of the original installed over ours leaves its files in our folder: `import
    spiga` scans no files, but the first `spiga.load` and every `spiga` command then fail
    with a message saying what to do, not somewhere deep inside."""
    package = tmp_path / "site" / "spiga"
    shutil.copytree(Path(spiga.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "models").mkdir(exist_ok=True)
    (package / "models" / "spiga.py").write_text("# the original package's model\n")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", "import spiga; spiga.load('wflw')"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "original SPIGA package" in last and "pip uninstall" in last
    run = subprocess.run([sys.executable, "-m", "spiga", "--version"], cwd=tmp_path, capture_output=True, text=True,
                         env=env)
    assert run.returncode == 2 and run.stderr.startswith("spiga: error:") and "pip uninstall" in run.stderr
