"""Startup: the time to the first landmark, from the shell and from Python.

    PYTHONPATH=src python speed/startup.py                         # this checkout, tiny model, 3 rounds
    PYTHONPATH=src python speed/startup.py --full --rounds 5       # also the official-size network
    PYTHONPATH=src python speed/startup.py --src before=/work/main/src --src after=src

Each figure is the median over `--rounds` rounds of a fresh process (wall clock, from
start to exit); every round runs every command once, one after the other (interleaved),
so a machine that other work slows down slows all of them alike. The figures are also
given as a ratio to `python -c "import torch"` of the same round, the yardstick
the goals are set against:

- `import torch`: `python -c "import torch"`;
- `spiga --version`, `spiga --help`: the console command (`python -m spiga` where none is
  installed);
- `import spiga`: `python -c "import spiga"`;
- `spiga align`: one photo with its face box given, JSON written (`spiga align IMAGE
  --model M --box X Y W H --json OUT`);
- in Python (one process per round): `import spiga`, `spiga.load(M)` of a checkpoint file,
  the first `align` call and the next one.

With several `--src NAME=FOLDER` (a `src/` folder each, put first on `PYTHONPATH`) every
round runs each command for each source in turn: before/after comparisons under the same
load. The model is a random-weight checkpoint written to a temporary folder (`tiny`; with
`--full` also the official network's size), the photo the shared fixture with its box.
Each source gets its own `SPIGA_HOME` (its caches, such as the CPU probe's answer), filled
by one untimed `spiga align` per source and model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import cpu_name  # the speed scripts' one timing harness (a sibling module)

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "fixtures" / "images"

#: In-process figures: printed as one JSON line by a fresh interpreter.
IN_PROCESS = """
import json, sys, time
start = time.perf_counter()
import spiga
imported = time.perf_counter()
aligner = spiga.load(sys.argv[1], device="cpu")
loaded = time.perf_counter()
box = json.loads(sys.argv[3])
aligner.align(sys.argv[2], boxes=[box])
first = time.perf_counter()
aligner.align(sys.argv[2], boxes=[box])
second = time.perf_counter()
print(json.dumps({"import spiga (in process)": imported - start, "spiga.load": loaded - imported,
                  "first align": first - loaded, "next align": second - first}))
"""

#: `--profile`: where `spiga.load`'s time goes (cProfile, cumulative seconds per phase).
PROFILE = """
import cProfile, json, pstats, sys
import spiga
profile = cProfile.Profile()
profile.enable()
spiga.load(sys.argv[1], device="cpu")
profile.disable()
phases = {"spiga.load": ("aligner.py", "load"), "load_checkpoint": ("checkpoint.py", "load_checkpoint"),
          "  build the network": ("checkpoint.py", "build_model"), "  load the weights": ("checkpoint.py", "_load_state"),
          "    check their values": ("checkpoint.py", "_check_values"),
          "prepare_for_inference": ("optimize.py", "prepare_for_inference"), "  copy the model": ("copy.py", "deepcopy"),
          "  fold batch norms": ("optimize.py", "fold_batch_norms"),
          "  stem's constant channels": ("optimize.py", "precompute_coord_channels"),
          "  channels-last": ("optimize.py", "to_channels_last"), "  fuse and prepack": ("optimize.py", "fuse_module"),
          "    conv input sizes (before)": ("optimize.py", "_conv_input_sizes"), "  CPU probe": ("cpu.py", "_probe")}
stats = pstats.Stats(profile).stats
found = {}
for label, (file, name) in phases.items():
    times = [value[3] for (path, _, function), value in stats.items() if path.endswith(file) and function == name]
    found[label] = max(times) if times else 0.0
print(json.dumps(found))
"""


def random_checkpoint(folder: Path, size: str) -> Path:
    """A WFLW-layout checkpoint of `size` (`tiny` or `official`) with seeded random weights."""
    sys.path.insert(0, str(REPO / "src"))
    import numpy as np
    import torch

    from spiga.checkpoint import build_model, save_checkpoint
    from spiga.landmarks import WFLW_98
    from spiga.model import ModelConfig

    torch.manual_seed(0)
    config = (ModelConfig.official(WFLW_98.num_landmarks, WFLW_98.num_edges) if size == "official"
              else ModelConfig.sized(size, WFLW_98.num_landmarks, WFLW_98.num_edges))
    rng = np.random.default_rng(0)
    mean_face = np.column_stack([rng.uniform(-0.3, 0.1, 98), rng.uniform(-0.8, 0.8, 98), rng.uniform(-1, 1, 98)])
    return save_checkpoint(folder / f"{size}-random.safetensors", build_model(config, WFLW_98, mean_face).eval(),
                           WFLW_98)


def photo(folder: Path) -> tuple[Path, list[float]]:
    """The shared fixture photo and its face box, or a synthetic face when ../shared is absent."""
    image = SHARED_IMAGES / "image_sportsfan.jpg"
    if image.exists():
        return image, json.loads((SHARED_IMAGES / "bbox_sportsfan.json").read_text())["bbox"]
    sys.path.insert(0, str(REPO / "src"))
    import cv2
    import numpy as np

    from spiga.data.synthetic import render_face

    face = render_face(np.random.default_rng(0), 256)
    path = folder / "synthetic.png"
    cv2.imwrite(str(path), face.image)
    return path, [float(v) for v in face.box]


def spiga_command() -> list[str]:
    """The installed console command, else `python -m spiga`."""
    installed = shutil.which("spiga", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "spiga"]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(seconds from start to exit, stdout) of `command`; a failure stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def commands(models: dict[str, Path], image: Path, box: list[float], out: Path) -> dict[str, list[str]]:
    """Name -> command line of every shell figure."""
    spiga = spiga_command()
    table = {"import torch": [sys.executable, "-c", "import torch"],
             "spiga --version": spiga + ["--version"],
             "spiga --help": spiga + ["--help"],
             "import spiga": [sys.executable, "-c", "import spiga"]}
    for size, model in models.items():
        table[f"spiga align ({size})"] = spiga + ["align", str(image), "--model", str(model), "--box",
                                                  *map(str, box), "--json", str(out)]
    return table


def one_round(sources: dict[str, dict[str, str]], table: dict[str, list[str]], models: dict[str, Path],
              image: Path, box: list[float]) -> dict[str, dict[str, float]]:
    """Every command once for every source: source -> figure -> seconds."""
    figures: dict[str, dict[str, float]] = {name: {} for name in sources}
    for figure, command in table.items():
        for name, env in sources.items():
            figures[name][figure] = timed(command, env)[0]
    for size, model in models.items():
        for name, env in sources.items():
            line = timed([sys.executable, "-c", IN_PROCESS, str(model), str(image), json.dumps(box)], env)[1]
            for key, value in json.loads(line.strip().splitlines()[-1]).items():
                figures[name][f"{key} ({size})" if key != "import spiga (in process)" else key] = value
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", action="append", metavar="NAME=FOLDER",
                        help="a src/ folder to measure, named (repeatable; default: this checkout's src)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; figures are medians (3)")
    parser.add_argument("--full", action="store_true", help="also the official-size network (random weights)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the figures as JSON")
    parser.add_argument("--profile", action="store_true",
                        help="instead: where spiga.load's time goes (cProfile per phase, one process per source "
                             "and model after a warm-up load)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="spiga-startup-"))
    sources: dict[str, dict[str, str]] = {}
    for spec in args.src or [f"this={REPO / 'src'}"]:
        name, _, folder = spec.partition("=")
        if not folder:
            name, folder = Path(spec).parent.name or spec, spec
        env = dict(os.environ, PYTHONPATH=str(Path(folder).resolve()), SPIGA_HOME=str(work / f"home-{name}"))
        sources[name] = env
    models = {"tiny": random_checkpoint(work, "tiny")}
    if args.full:
        models["official size"] = random_checkpoint(work, "official")
    image, box = photo(work)
    table = commands(models, image, box, work / "out.json")
    if args.profile:
        profile_load(sources, models)
        shutil.rmtree(work, ignore_errors=True)
        return 0

    print(f"{cpu_name()}, {os.cpu_count()} logical CPUs; {args.rounds} rounds after a warm-up `spiga align`",
          file=sys.stderr)
    for size in models:  # warm-up: the page cache, and the caches under each SPIGA_HOME
        for env in sources.values():
            timed(table[f"spiga align ({size})"], env)
    rounds = []
    for index in range(args.rounds):
        rounds.append(one_round(sources, table, models, image, box))
        # each round's figures as they come: a long run on a busy machine can be read before its end
        print(f"  round {index + 1}/{args.rounds}: {json.dumps(rounds[-1])}", file=sys.stderr)
    report = summarise(rounds, sources)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "rounds": args.rounds, "figures": report},
                                              indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def profile_load(sources: dict[str, dict[str, str]], models: dict[str, Path]) -> None:
    """Print the seconds of each phase of `spiga.load` for every source and model."""
    print(f"{cpu_name()}, {os.cpu_count()} logical CPUs; cProfile, seconds (cumulative)", file=sys.stderr)
    results = {}
    for size, model in models.items():
        for name, env in sources.items():
            timed([sys.executable, "-c", PROFILE, str(model)], env)  # warm-up: page cache, the probe's cache
            line = timed([sys.executable, "-c", PROFILE, str(model)], env)[1]
            results[f"{name} ({size})"] = json.loads(line.strip().splitlines()[-1])
    columns = list(results)
    print("| phase | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for phase in results[columns[0]]:
        print(f"| {phase} | " + " | ".join(f"{results[c][phase]:.3f}" for c in columns) + " |")


def summarise(rounds: list[dict[str, dict[str, float]]], sources) -> dict[str, dict[str, dict[str, float]]]:
    """source -> figure -> {median seconds, median ratio to `import torch` of the same round}."""
    report: dict[str, dict[str, dict[str, float]]] = {}
    for name in sources:
        figures = rounds[0][name].keys()
        report[name] = {
            figure: {"seconds": statistics.median(r[name][figure] for r in rounds),
                     "x_import_torch": statistics.median(r[name][figure] / r[name]["import torch"] for r in rounds)}
            for figure in figures}
    return report


def print_report(report: dict[str, dict[str, dict[str, float]]]) -> None:
    names = list(report)
    figures = list(report[names[0]])
    header = "| figure | " + " | ".join(f"{name}: s | {name}: x import torch" for name in names) + " |"
    print(header)
    print("|---|" + "---:|---:|" * len(names))
    for figure in figures:
        cells = []
        for name in names:
            value = report[name][figure]
            ratio = f"{value['x_import_torch']:.2f}" if not figure.startswith(("spiga.load", "first", "next",
                                                                                  "import spiga (in")) else ""
            cells.append(f"{value['seconds']:.3f} | {ratio}")
        print(f"| {figure} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
