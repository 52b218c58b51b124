"""The original SPIGA implementation (the `spiga==0.0.6` package), made to run on a CPU
beside this torch, for the benchmarks only.

Nothing of it is kept in this repository: `install_original` pip-installs the published
wheel (without dependencies) into a cache folder, and `load_original` imports it from
there with three run-time patches:

- `torchvision` (which cannot be installed beside this torch) is replaced, if absent,
  by a stub module with the two names the inference path imports (`transforms.Compose`,
  `transforms.functional.hflip`);
- `pkg_resources` (gone from setuptools >= 81) is replaced, if absent, by a stub whose
  `resource_filename(package, path)` points into the installed package;
- `torch.nn.Module.cuda` and `torch.Tensor.cuda` become the identity, so the code's
  hard-wired `.cuda()` calls leave everything on the CPU.

The patches change process-wide state: call `load_original` only in a process that
runs nothing else (the benchmark gives it a worker process of its own).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Callable

import numpy as np

ORIGINAL_VERSION = "0.0.6"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spiga-benchmarks" / f"original-{ORIGINAL_VERSION}"


def install_original(target: Path | None = None) -> Path:
    """pip-install spiga==0.0.6 (no dependencies) into `target` once; returns the folder.

    Raises RuntimeError with pip's last lines when it cannot be installed (no network, ...).
    """
    target = Path(target or default_cache())
    if (target / "spiga" / "inference" / "framework.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--target", str(partial), f"spiga=={ORIGINAL_VERSION}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-2:])
        raise RuntimeError(f"pip install spiga=={ORIGINAL_VERSION} failed: {tail}")
    os.replace(partial, target)
    return target


def _stub_torchvision() -> None:
    """A torchvision with only what the original's inference imports, if the real one is absent."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # ImportError, or a torchvision built for another torch
        pass
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    class Compose:
        def __init__(self, steps):
            self.steps = list(steps)

        def __call__(self, sample):
            for step in self.steps:
                sample = step(sample)
            return sample

    def hflip(image):
        from PIL import Image
        return image.transpose(Image.FLIP_LEFT_RIGHT)

    transforms.Compose = Compose
    transforms.functional = functional
    functional.hflip = hflip
    root.transforms = transforms
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def _stub_pkg_resources() -> None:
    try:
        import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass
    module = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ImportError(f"package {package!r} not found")
        return os.path.join(os.path.dirname(spec.origin), resource)

    module.resource_filename = resource_filename
    sys.modules["pkg_resources"] = module


def _cuda_to_identity() -> None:
    import torch

    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


def load_original(site: Path, weights: Path, dataset: str, device: str = "cpu", autocast_dtype=None
                  ) -> Callable[[np.ndarray, np.ndarray], tuple]:
    """The original `SPIGAFramework`, loaded with `weights` (an official-layout state_dict
    file) for `dataset` (wflw, 300wpublic, ...), on the CPU (its `.cuda()` calls disabled)
    or, with device="cuda", on the first GPU as it was written for.

    Returns run(image BGR uint8 (H, W, 3), boxes (B, 4) xywh) -> (landmarks (B, L, 2),
    headpose (B, 6)) as the original computes them (`SPIGAFramework.inference`).
    With `autocast_dtype` (e.g. torch.bfloat16) its network runs under `torch.autocast`
    (its outputs cast back to float32 for its NumPy post-processing).
    """
    _stub_torchvision()
    _stub_pkg_resources()
    if device == "cpu":
        _cuda_to_identity()
    sys.path.insert(0, str(site))
    from spiga.inference.config import ModelConfig as OriginalConfig
    from spiga.inference.framework import SPIGAFramework

    if "spiga" in sys.modules and not sys.modules["spiga"].__file__.startswith(str(site)):
        raise RuntimeError(f"imported spiga from {sys.modules['spiga'].__file__}, not the original in {site}")
    config = OriginalConfig(dataset, load_model_url=False)
    config.model_weights_path = str(Path(weights).parent)
    config.model_weights = Path(weights).name
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "SPIGA model loaded!"
        framework = SPIGAFramework(config)
    if autocast_dtype is not None:
        import torch

        forward = framework.net_forward

        def net_forward_autocast(inputs):
            with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=autocast_dtype):
                features = forward(inputs)
            return {key: ([v.float() for v in value] if isinstance(value, list) and value
                          and isinstance(value[0], torch.Tensor) else
                          value.float() if isinstance(value, torch.Tensor) else value)
                    for key, value in features.items()}

        framework.net_forward = net_forward_autocast

    def run(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = framework.inference(image, [list(map(float, box)) for box in boxes])
        return np.asarray(features["landmarks"]), np.asarray(features["headpose"])

    return run


if __name__ == "__main__":
    # `python speed/original.py DIR`: install the original into DIR (e.g. to carry it
    # to a machine without internet: speed/.cache/original-0.0.6 is where gpu.py looks)
    print(install_original(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
