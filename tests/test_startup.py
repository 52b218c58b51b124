"""Startup: what `import spiga`, `spiga --version` and `--help` import, the CPU probe's
cache on disk, and a load that neither initialises nor copies the network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import spiga
from spiga import choices
from spiga.inference import cpu

HEAVY = ("torch", "numpy", "cv2", "PIL", "safetensors", "onnxruntime")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running `code`."""
    probe = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
             f"print('\\n' + ' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return run.stdout.splitlines()[-1].split()


@pytest.mark.parametrize("code", ["import spiga", "import spiga.cli",
                                  "from spiga.cli import main; main(['--version'])",
                                  "from spiga.cli import main; main(['--help'])",
                                  "from spiga.cli import main; main(['train', '--help'])"])
def test_version_and_help_import_neither_torch_nor_numpy(code):
    assert heavy_modules_after(code) == []


def test_lazy_names_resolve():
    from spiga import Face, HeadPose

    assert spiga.load is spiga.inference.aligner.load and spiga.Aligner is spiga.inference.Aligner
    assert Face.__module__ == "spiga.face" and HeadPose.__module__ == "spiga.face"
    assert {"load", "Aligner", "Face", "HeadPose"} <= set(dir(spiga))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        spiga.nothing  # noqa: B018


def test_choices_are_the_librarys():
    from spiga.detection import DETECTOR_NAMES
    from spiga.evaluate.metrics import NORMS
    from spiga.inference.backends import BACKENDS
    from spiga.inference.optimize import PRECISIONS
    from spiga.landmarks import DATASET_LANDMARKS
    from spiga.model import MODEL_SIZES
    from spiga.train.config import OPTIMIZERS, TRAIN_PRECISIONS
    from spiga.train.recipe import PARTS, STAGES

    assert tuple(PRECISIONS) == choices.PRECISIONS and BACKENDS == choices.BACKENDS
    assert DETECTOR_NAMES == choices.DETECTORS and NORMS == choices.NORMS
    assert tuple(DATASET_LANDMARKS) == choices.DATASET_CONFIGS and tuple(MODEL_SIZES) == choices.MODEL_SIZES
    assert tuple(STAGES) == choices.TRAIN_STAGES and PARTS == choices.TRAIN_PARTS
    assert OPTIMIZERS == choices.OPTIMIZERS and TRAIN_PRECISIONS == choices.TRAIN_PRECISIONS


# --- the CPU probe's answer on disk -------------------------------------------------------


@pytest.fixture
def fresh_probe(tmp_path, monkeypatch):
    """The probe with an empty cache folder and no answer in memory; `runs` counts trials."""
    monkeypatch.setenv("SPIGA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(cpu.PROBE_ENV, raising=False)
    monkeypatch.delenv(cpu.FAST_PATHS_ENV, raising=False)
    runs: list[str] = []
    real = cpu._run_trials

    def counted(isa: str) -> cpu.CpuFeatures:
        runs.append(isa)
        return real(isa)

    monkeypatch.setattr(cpu, "_run_trials", counted)
    cpu._probe.cache_clear()
    yield runs
    cpu._probe.cache_clear()


def probe_again() -> cpu.CpuFeatures:
    """A new process's probe (the in-memory answer forgotten)."""
    cpu._probe.cache_clear()
    return cpu._probe()


def test_probe_answer_is_kept_on_disk(fresh_probe, tmp_path):
    first = probe_again()
    files = list((tmp_path / "home" / "cpu-probe").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["torch"] == torch.__version__
    assert probe_again() == first and len(fresh_probe) == 1  # the second process read the file


def test_probe_runs_again_when_its_key_changes_or_when_asked(fresh_probe, monkeypatch):
    first = probe_again()
    real_key = cpu._probe_key
    monkeypatch.setattr(cpu, "_probe_key", lambda isa: {**real_key(isa), "torch": "another version"})
    assert probe_again() == first and len(fresh_probe) == 2
    monkeypatch.setenv(cpu.PROBE_ENV, "refresh")
    assert probe_again() == first and len(fresh_probe) == 3


@pytest.mark.parametrize("damage", ["not json", '{"key": 1}', "unreadable"])
def test_a_bad_or_unwritable_cache_is_ignored(fresh_probe, tmp_path, damage, monkeypatch):
    first = probe_again()
    (stored,) = (tmp_path / "home" / "cpu-probe").glob("*.json")
    if damage == "unreadable":  # the cache folder is a file: nothing can be read or written there
        monkeypatch.setenv("SPIGA_HOME", str(stored))
    else:
        stored.write_text(damage)
    assert probe_again() == first and len(fresh_probe) == 2


# --- loading -------------------------------------------------------------------------------


def test_load_neither_initialises_nor_copies_the_network(tiny_checkpoint, monkeypatch):
    from spiga.checkpoint import load_checkpoint
    from spiga.inference import optimize

    def no_copy(*args, **kwargs):
        raise AssertionError("spiga.load copied the model")

    monkeypatch.setattr(optimize.copy, "deepcopy", no_copy)
    rng = torch.get_rng_state()
    aligner = spiga.load(tiny_checkpoint, device="cpu")
    assert torch.equal(torch.get_rng_state(), rng)  # no random initialisation drew from the generator
    assert aligner.model is aligner.backend.network  # prepared in place
    reference = load_checkpoint(tiny_checkpoint).model.state_dict()
    from safetensors.torch import load_file

    stored = load_file(str(tiny_checkpoint))
    assert all(torch.equal(reference[k], stored[k]) for k in reference)


def test_the_mixed_install_check_runs_on_the_first_load(tiny_checkpoint, monkeypatch):
    from spiga import about

    def mixed() -> None:
        raise ImportError("mixed installation")

    monkeypatch.setattr(about, "_installation_checked", False)
    monkeypatch.setattr(about, "check_installation", mixed)
    with pytest.raises(ImportError, match="mixed installation"):
        spiga.load(tiny_checkpoint, device="cpu")
