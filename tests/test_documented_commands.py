"""Every `bash` and `python` block of README.md and docs/ runs here, page by page.

The convention (docs/development.md, "Documents are code"):
- a `bash` or `python` block runs as written, in page order, in an empty folder, offline,
  with the named models it uses pre-placed in the cache as random-weight stand-ins and the
  user's own files the pages name (`photo.jpg`, `photos/`, `clip.mp4`) as stand-ins;
- a `python title="NAME"` block is a file the page asks you to save: it is written to NAME;
- `console` and `text` blocks show commands for your own data, a GPU, a long run or the
  network: they are not run;
- a block preceded by `<!--pytest.mark.skip(reason="...")-->` is run elsewhere (the README's
  install section by tools/check_readme_install.py) and says where.
Step counts stay realistic in the pages; `shorten` cuts them here. Blocks are read with
pytest-codeblocks' parser (`pytest_codeblocks.extract_from_file`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED, UPSTREAM_MEAN_FACES

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NAMED_MODELS = {"wflw": "wflw98", "300wpublic": "ibug68", "300wprivate": "ibug68", "merlrav": "ibug68",
                "cofw68": "ibug68"}
PHOTO = SHARED / "fixtures" / "images" / "image_sportsfan.jpg"
BLOCK_TIMEOUT_S = 300


def _blocks(page: Path):
    from pytest_codeblocks import extract_from_file

    return extract_from_file(page)


def _fence(syntax: str | None) -> tuple[str, str | None]:
    """(language, title) of a fence's info string, e.g. `python title="to8bit.py"`."""
    words = (syntax or "").split(maxsplit=1)
    language = words[0] if words else ""
    title = re.search(r'title="([^"]+)"', words[1]) if len(words) > 1 else None
    return language, title.group(1) if title else None


def _runs(block) -> bool:
    """A `bash` or `python` block without a skip mark."""
    return _fence(block.syntax)[0] in ("bash", "python") and not any("skip" in mark for mark in block.marks)


def _runnable(page: Path) -> bool:
    return any(_runs(block) for block in _blocks(page))


# --- step counts: realistic in the pages, short here -----------------------------------------

_SHORTEN = [
    (re.compile(r"--epochs \d+"), lambda m: "--max-steps 2"),
    (re.compile(r"--max-steps (\d+)"), lambda m: f"--max-steps {max(2, int(m.group(1)) // 1000)}"),
    (re.compile(r"max_steps=\d+"), lambda m: "max_steps=2"),
    (re.compile(r"--batch-size \d+"), lambda m: "--batch-size 2"),
    (re.compile(r"batch_size=\d+"), lambda m: "batch_size=2"),
    (re.compile(r"--model-size official"), lambda m: "--model-size tiny"),
    # synthetic data sets: write_synthetic_dataset(folder, COUNT, ...) and its short alias w(...)
    (re.compile(r"""((?:write_synthetic_dataset|\bw)\(\s*['"][^'"]+['"],\s*)(\d+)"""),
     lambda m: f"{m.group(1)}{min(int(m.group(2)), 6)}"),
]


def shorten(code: str) -> str:
    """The block with its step, batch and data-set counts cut to a test's size."""
    for pattern, replacement in _SHORTEN:
        code = pattern.sub(replacement, code)
    return code


def test_every_block_is_run_or_marked():
    """Every fenced block of the pages is `bash`/`python` (run), `console`/`text` (shown),
    or another language for data (`json`, `yaml`, ...); a skip mark always gives its reason."""
    for page in PAGES:
        for block in _blocks(page):
            for mark in block.marks:
                assert "reason=" in mark, f"{page.name}, line {block.lineno}: a skip mark without a reason"


def test_shorten_keeps_the_command_and_cuts_the_counts():
    assert shorten("spiga train --epochs 30 --batch-size 16 --out r") == "spiga train --max-steps 2 --batch-size 2 --out r"
    assert shorten("spiga train --resume r --max-steps 3000") == "spiga train --resume r --max-steps 3"
    assert shorten("w('thermal/train', 300, seed=1)") == "w('thermal/train', 6, seed=1)"


# --- the folder a page runs in -----------------------------------------------------------------


def _stand_in_models(cache: Path) -> None:
    from spiga.testing import random_checkpoint

    models = cache / "models"
    models.mkdir(parents=True)
    for seed, (name, layout) in enumerate(NAMED_MODELS.items()):
        random_checkpoint(models / f"spiga_{name}.safetensors", size="tiny", landmark_set=layout, seed=seed)
    if UPSTREAM_MEAN_FACES.is_dir():  # the official mean faces, as a user who ran spiga once has them
        (cache / "models3D").mkdir()
        for file in UPSTREAM_MEAN_FACES.glob("mean_face_3D_*.txt"):
            shutil.copyfile(file, cache / "models3D" / file.name)


def _page_cache(stand_ins: Path, page_text: str, folder: Path) -> Path:
    """The page's own copy of the cache (hard links): every named model, except those whose
    official weights file the page brings itself (it then shows the conversion)."""
    cache = folder / "spiga-home"
    shutil.copytree(stand_ins, cache, copy_function=os.link)
    for name in NAMED_MODELS:
        if f"spiga_{name}.pt" in page_text:
            (cache / "models" / f"spiga_{name}.safetensors").unlink()
    if "models3D/" in page_text:  # the page shows how the mean faces get there
        shutil.rmtree(cache / "models3D", ignore_errors=True)
    return cache


def _official_weights(page_text: str, folder: Path) -> None:
    """The official weights files the page names (`spiga_wflw.pt`, ...), as the user would have
    downloaded them: random weights in the official layout, written by ../shared's tool."""
    tool = SHARED / "tools" / "random_spiga_weights.py"
    for name, layout in NAMED_MODELS.items():
        if f"spiga_{name}.pt" in page_text:
            if not tool.is_file():
                pytest.skip("needs ../shared/tools/random_spiga_weights.py (official-layout stand-in weights)")
            points = "98" if layout == "wflw98" else "68"
            subprocess.run([sys.executable, str(tool), "--landmarks", points, "--seed", "1", "--out",
                            str(folder / f"spiga_{name}.pt")], check=True, capture_output=True, timeout=600)


def _stand_in_user_files(folder: Path) -> None:
    """The user's photo, folder of photos and clip that the pages name."""
    import cv2
    import numpy as np

    shutil.copyfile(PHOTO, folder / "photo.jpg")
    for file in UPSTREAM_MEAN_FACES.glob("mean_face_3D_*.txt"):  # downloaded by the reader, for an offline machine
        shutil.copyfile(file, folder / file.name)
    image = cv2.imread(str(PHOTO))
    (folder / "photos").mkdir()
    cv2.imwrite(str(folder / "photos" / "a.jpg"), image)
    cv2.imwrite(str(folder / "photos" / "b.png"), cv2.flip(image, 1))
    small = cv2.resize(image, (image.shape[1] // 2 // 2 * 2, image.shape[0] // 2 // 2 * 2))
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10,
                             (small.shape[1], small.shape[0]))
    for shift in range(4):
        writer.write(np.roll(small, 3 * shift, axis=1))
    writer.release()


@pytest.fixture(scope="module")
def stand_in_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("spiga-home")
    _stand_in_models(cache)
    return cache


def _environment(home: Path, cache: Path) -> dict[str, str]:
    bin_folder = str(Path(sys.executable).parent)
    return {
        "PATH": f"{bin_folder}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "SPIGA_HOME": str(cache),
        "SPIGA_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf"), "PYTHONPATH": str(REPO / "src"),
        "LANG": "C.UTF-8", "OMP_NUM_THREADS": "2", "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }


# --- running a page ------------------------------------------------------------------------------


def _run_bash(code: str, folder: Path, env: dict[str, str], where: str) -> None:
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, (f"{where}: exit {result.returncode}\n--- block\n{code}\n--- stdout\n"
                                    f"{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-3000:]}")


_PYTHON_DRIVER = """
import sys
namespace = {"__name__": "__main__"}
for path in sys.argv[1:]:
    exec(compile(open(path, encoding="utf-8").read(), path, "exec"), namespace)
"""


def _run_python(blocks: list[tuple[str, str]], folder: Path, env: dict[str, str]) -> None:
    """The page's Python blocks so far, in one interpreter and one namespace, as a reader
    pasting them into one session would (later blocks use earlier names)."""
    files = []
    for index, (code, _) in enumerate(blocks):
        path = folder.parent / f"{folder.name}-block{index}.py"
        path.write_text(code, encoding="utf-8")
        files.append(str(path))
    result = subprocess.run([sys.executable, "-c", _PYTHON_DRIVER, *files], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    where = blocks[-1][1]
    assert result.returncode == 0, (f"{where}: Python block failed\n--- block\n{blocks[-1][0]}\n--- stderr\n"
                                    f"{result.stderr[-3000:]}")


def _run_page(page: Path, folder: Path, env: dict[str, str]) -> int:
    """Run the page's blocks in order; return how many ran. Consecutive Python blocks run
    together in one interpreter (a bash block between them starts a new one)."""
    python_run: list[tuple[str, str]] = []
    ran = 0

    def flush() -> None:
        if python_run:
            _run_python(python_run, folder, env)
            python_run.clear()

    for block in _blocks(page):
        if not _runs(block):
            continue
        language, title = _fence(block.syntax)
        where = f"{page.relative_to(REPO)}, line {block.lineno}"
        code = shorten(block.code)
        if language == "python" and title:
            (folder / title).write_text(block.code, encoding="utf-8")
        elif language == "python":
            python_run.append((code, where))
        else:
            flush()
            _run_bash(code, folder, env, where)
        ran += 1
    flush()
    return ran


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_page_runs_as_written(page, stand_in_cache, tmp_path):
    if not PHOTO.is_file():
        pytest.skip("needs ../shared/fixtures/images (a real photo stands in for the user's photo.jpg)")
    folder = tmp_path / "work"
    folder.mkdir()
    _stand_in_user_files(folder)
    text = page.read_text(encoding="utf-8")
    _official_weights(text, folder)
    home = tmp_path / "home"
    home.mkdir()
    cache = _page_cache(stand_in_cache, text, tmp_path)
    assert _run_page(page, folder, _environment(home, cache)) > 0
