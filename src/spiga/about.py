"""The package's names and version, in one place.

The distribution is `spiga-landmarks` on PyPI (`spiga` there is the original authors'
package, 0.0.6). The import name is `spiga`: it replaces the original package's module, so
the two cannot share an environment; `check_installation` says so instead of failing
somewhere deep inside.
"""

from __future__ import annotations

from pathlib import Path

DISTRIBUTION = "spiga-landmarks"
__version__ = "0.2.0"

ORIGINAL_DISTRIBUTION = "spiga"
# files only the original package has: when they sit in our package folder, its wheel was
# installed over ours (or ours over it) and the two packages' files are mixed
_ORIGINAL_FILES = ("models/spiga.py", "inference/framework.py", "demo/app.py")


def install_hint(extra: str | None = None) -> str:
    """The pip command that installs this package (with an optional extra): from a clone, as the
    package is not on PyPI yet, and the PyPI form it will take once released."""
    local, released = (f"'.[{extra}]'", f"'{DISTRIBUTION}[{extra}]'") if extra else (".", DISTRIBUTION)
    return f"pip install {local} in a clone of {DISTRIBUTION} (once released on PyPI: pip install {released})"


def mixed_installation() -> str | None:
    """A description of the original SPIGA package installed in this environment, or None."""
    here = Path(__file__).resolve().parent
    found = [name for name in _ORIGINAL_FILES if (here / name).is_file()]
    if found:
        return f"files of the original SPIGA package ({', '.join(found)}) are inside {here}"
    try:
        from importlib import metadata

        version = metadata.version(ORIGINAL_DISTRIBUTION)
    except Exception:  # not installed (PackageNotFoundError), or unreadable metadata
        return None
    if version.startswith("0.0."):
        return f"the original SPIGA package ({ORIGINAL_DISTRIBUTION} {version}) is installed in this environment"
    return None


def check_installation() -> None:
    """Raise ImportError, saying what to do, when the original package shares this environment."""
    problem = mixed_installation()
    if problem:
        raise ImportError(
            f"{problem}: it and {DISTRIBUTION} both provide the module `spiga` and cannot be installed together. "
            f"Remove both and reinstall this one: pip uninstall -y {ORIGINAL_DISTRIBUTION} {DISTRIBUTION} && "
            f"{install_hint()}")


_installation_checked = False


def check_installation_once() -> None:
    """`check_installation`, the first time it passes in this process (the first `spiga.load`;
    importing `spiga` scans no files)."""
    global _installation_checked
    if not _installation_checked:
        check_installation()
        _installation_checked = True
