"""Coverage-guided fuzzing of spiga's file readers with atheris (libFuzzer).

    python tests/fuzz/fuzz.py list                               # the targets
    python tests/fuzz/fuzz.py wflw -max_total_time=600           # one target, ten minutes
    python tests/fuzz/fuzz.py all -seed=1 -runs=30000            # every target (CI smoke run, reproducible)
    python tests/fuzz/fuzz.py keep all FINDING case-short-name   # keep a fixed finding as a regression case

Run from the repository root, without installing spiga (src/ is put on the path).
Seeds come from tests/corpus/<target>/ and are copied to a temporary working corpus, so
the repository is never written; libFuzzer options (`-max_total_time`, `-runs`,
`-timeout`, `-jobs`, ...) pass through. A finding is any exception other than
`SpigaError`, or an input running past `-timeout` (20 s unless given): libFuzzer writes
it to the folder printed at the start (`-artifact_prefix`).

With `all`, the first byte of each input picks the target, so a finding of `all` is one
byte longer than the target's own input. Keep a finding, once fixed, with `keep`, which
strips that byte (`keep all FINDING NAME`) or keeps the file as it is (`keep TARGET
FINDING NAME`), writes tests/corpus/<target>/NAME and replays it; copying a finding of
`all` into a target's folder by hand shifts every byte by one.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

CORPUS = REPO / "tests" / "corpus"


def _seed_corpus(names: list[str], select: bool, folder: Path) -> None:
    """Copy the kept corpus into `folder` (with the target-selecting byte under `all`)."""
    for index, name in enumerate(names):
        source = CORPUS / name
        if not source.is_dir():
            continue
        for seed in sorted(source.iterdir()):
            if seed.is_file():
                data = seed.read_bytes()
                (folder / f"{name}-{seed.name}").write_bytes(bytes([index]) + data if select else data)


def _inherited_peak_mb() -> int:
    """The peak RSS this process starts with, in MiB. libFuzzer's memory limit (2048 MiB
    by default) is checked against the peak RSS, which Linux carries over from the parent
    through fork and exec: a fuzzer started by a large process (a long pytest session)
    would be stopped as out of memory before it ran an input. The limit is set above it."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak / 1024 if sys.platform != "darwin" else peak / 2**20)


def split_all_input(data: bytes, names: list[str]) -> tuple[str, bytes]:
    """An input of the `all` fuzzer -> (target, the target's own input): the first byte
    picks the target among `names` (sorted), the rest is what the target reads."""
    return names[data[0] % len(names)], data[1:]


def keep(target: str, finding: Path, name: str) -> Path:
    """Copy `finding` into tests/corpus/<target>/<name> as the target's own input (without
    the selecting byte for `all`); return the path written."""
    from fuzz.targets import TARGETS

    data = finding.read_bytes()
    if target == "all":
        if not data:
            raise ValueError(f"{finding}: an empty input of `all` selects no target")
        target, data = split_all_input(data, sorted(TARGETS))
    elif target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: all, {', '.join(sorted(TARGETS))}")
    if not name.startswith(("refuse-", "ok-", "case-")) or "/" in name:
        raise ValueError(f"{name!r}: corpus names start with refuse-, ok- or case- (see tests/corpus/README.md)")
    path = CORPUS / target / name
    if path.exists():
        raise ValueError(f"{path} exists already")
    path.write_bytes(data)
    return path


def main(argv: list[str]) -> int:
    from fuzz.targets import TARGETS, run_target

    if len(argv) >= 2 and argv[1] == "keep":
        if len(argv) != 5:
            print("usage: fuzz.py keep all|TARGET FINDING NAME", file=sys.stderr)
            return 2
        try:
            path = keep(argv[2], Path(argv[3]), argv[4])
        except (OSError, ValueError) as exc:
            print(f"fuzz.py keep: {exc}", file=sys.stderr)
            return 2
        print(f"kept {path.relative_to(REPO)}: {run_target(path.parent.name, path.read_bytes())}")
        return 0
    if len(argv) < 2 or argv[1] in ("-h", "--help", "list"):
        print(__doc__.strip().splitlines()[0])
        print("targets: all, " + ", ".join(sorted(TARGETS)) + "; `keep all|TARGET FINDING NAME` keeps a finding")
        return 0 if len(argv) >= 2 else 2
    name, options = argv[1], argv[2:]
    if name != "all" and name not in TARGETS:
        print(f"unknown target {name!r}; known: all, {', '.join(sorted(TARGETS))}", file=sys.stderr)
        return 2

    import atheris

    # the heavy dependencies are imported first so that only spiga's code is instrumented
    import cv2  # noqa: F401
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import scipy.io  # noqa: F401
    import torch  # noqa: F401

    with atheris.instrument_imports(include=["spiga"]):
        import spiga.data.formats  # noqa: F401
        import spiga.detection.filebox  # noqa: F401
        import spiga.evaluate.formats  # noqa: F401
        import spiga.io  # noqa: F401
        import spiga.landmarks.set_files  # noqa: F401
        import spiga.landmarks.mean_face  # noqa: F401

    import logging

    logging.disable(logging.CRITICAL)  # skip_bad warnings would drown libFuzzer's output
    names = sorted(TARGETS) if name == "all" else [name]

    def one_input(data: bytes) -> None:
        if name == "all":
            if not data:
                return
            target, data = split_all_input(data, names)
        else:
            target = name
        run_target(target, data, hang_seconds=None)  # libFuzzer's -timeout watches for hangs

    work = Path(tempfile.mkdtemp(prefix=f"spiga-fuzz-{name}-"))
    corpus = work / "corpus"
    artifacts = work / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    _seed_corpus(names, name == "all", corpus)
    if not any(o.startswith("-timeout=") for o in options):
        options.append("-timeout=20")
    if not any(o.startswith("-rss_limit_mb=") for o in options):
        options.append(f"-rss_limit_mb={_inherited_peak_mb() + 2048}")
    if not any(o.startswith("-artifact_prefix=") for o in options):
        options.append(f"-artifact_prefix={artifacts}/")
    print(f"fuzzing {name}: working corpus {corpus}, findings in {artifacts}", file=sys.stderr)
    positional = [o for o in options if not o.startswith("-")]
    flags = [o for o in options if o.startswith("-")]
    atheris.Setup([argv[0], *flags, *(positional or [str(corpus)])], one_input)
    try:
        atheris.Fuzz()
    finally:
        if not any(artifacts.iterdir()):
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
