"""Run the README's `## Install` section as written, in a fresh clone and a fresh environment.

Every line of the section's `bash` blocks runs in order, in one bash shell (`set -euo
pipefail`, so a failing line stops the check), inside a fresh `git clone` of this checkout's
committed HEAD, with a fresh virtual environment active; then `spiga --version` must work.
Two kinds of line are set aside: `git clone` / `cd` lines (the check made the clone and
stands in it), and the PyTorch index line, swapped for `pip install torch==2.13.0` (`--torch`)
so that CI installs the same build as everywhere else. pip's own cache is reused.

    python tools/check_readme_install.py              # CI (.ci/run)
    python tools/check_readme_install.py --dry-run    # print the commands only
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_INDEX = "download.pytorch.org"


def install_section(readme: str) -> str:
    """The text of the `## Install` section (up to the next `## ` heading)."""
    match = re.search(r"^## Install\s*$(.*?)(?=^## )", readme + "\n## ", flags=re.M | re.S)
    if match is None:
        raise SystemExit("README.md has no `## Install` section")
    return match.group(1)


def bash_lines(section: str) -> list[str]:
    """The command lines of the section's ```bash blocks, continuations joined, comments and
    blank lines dropped."""
    lines: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", section, flags=re.M | re.S):
        pending = ""
        for raw in block.splitlines():
            pending += raw.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            command, pending = pending.strip(), ""
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def check_commands(lines: list[str], torch: str) -> list[str]:
    """The lines the check runs: clone and cd lines aside, the PyTorch index line swapped."""
    commands = []
    for line in lines:
        if re.match(r"(git clone|cd)\b", line):
            continue
        if TORCH_INDEX in line:
            line = f"pip install {torch}"
        commands.append(line)
    return commands


def run(commands: list[str], clone_from: Path) -> int:
    """Clone, make a fresh venv, run the commands and `spiga --version` in one bash shell."""
    with tempfile.TemporaryDirectory(prefix="readme-install-") as scratch:
        clone = Path(scratch) / "spiga-landmarks"
        subprocess.run(["git", "clone", "--quiet", str(clone_from), str(clone)], check=True)
        venv = Path(scratch) / "venv"
        script = "\n".join(["set -euo pipefail", f"python3 -m venv {shlex.quote(str(venv))}",
                            f". {shlex.quote(str(venv))}/bin/activate", "set -x", *commands, "spiga --version"])
        # nothing from the caller's environment may stand in for the installation under test
        env = {key: value for key, value in os.environ.items()
               if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        env.setdefault("PIP_PROGRESS_BAR", "off")
        result = subprocess.run(["bash", "-c", script], cwd=clone, env=env)
        if result.returncode:
            print(f"check_readme_install: the README's install section failed (exit {result.returncode})",
                  file=sys.stderr)
        return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--torch", default="torch==2.13.0",
                        help="what the PyTorch index line installs instead (default torch==2.13.0)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands the check would run")
    args = parser.parse_args()
    commands = check_commands(bash_lines(install_section(args.readme.read_text())), args.torch)
    if not commands:
        raise SystemExit("the README's install section has no commands")
    if args.dry_run:
        print("\n".join(commands))
        return 0
    return run(commands, args.readme.resolve().parent)


if __name__ == "__main__":
    sys.exit(main())
