"""What a bug report needs, gathered in one place: `spiga info` prints it.

Versions (spiga, Python, the platform, the libraries), the CPU probe, the devices, the
caches and the models in them, and the settings in effect. Nothing here touches the
network; secrets (tokens, API keys) are reported as set or not set, never by value.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

#: Distributions whose versions are reported (the optional ones say "not installed").
_DISTRIBUTIONS = ("torch", "numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "onnxruntime-gpu",
                  "huggingface_hub", "safetensors", "pillow", "scipy", "onnx", "fastapi", "uvicorn", "pillow-heif",
                  "pyyaml", "matplotlib", "dlib-bin")
#: Settings read from the environment, reported by value.
_SETTINGS = ("SPIGA_HOME", "SPIGA_OFFLINE", "SPIGA_HUB_REVISION", "SPIGA_MEAN_FACE_URL", "HF_HOME", "HF_HUB_CACHE",
             "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
#: Secrets: reported as set or not set only.
_SECRETS = ("HF_TOKEN", "SPIGA_API_KEY")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """spiga, Python, the platform, and each installed library's version."""
    from .about import __version__

    found = {"spiga": __version__, "python": platform.python_version(), "platform": platform.platform(),
             "machine": platform.machine(), "executable": sys.executable}
    for distribution in _DISTRIBUTIONS:
        version = _version(distribution)
        if version is not None:
            found[distribution] = version
    try:
        import cv2

        found["opencv (cv2)"] = cv2.__version__
    except ImportError as exc:
        found["opencv (cv2)"] = f"cannot import ({exc})"
    return found


def devices() -> dict[str, Any]:
    """The CPU probe and the accelerators PyTorch sees."""
    import torch

    from .inference.cpu import cpu_features

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {"cpu": cpu_features().describe(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "cuda_available": cuda,
                            "torch_cuda": torch.version.cuda, "default_device": "cuda" if cuda else "cpu"}
    if cuda:
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps is not None and mps.is_available())
    return info


def caches() -> dict[str, Any]:
    """spiga's cache folder and the models in it, the Hub's cache and the official weights in it
    (looked up on disk only)."""
    from huggingface_hub import try_to_load_from_cache

    from . import hub

    home = hub.spiga_home()
    models = home / "models"
    weights = sorted({model.weights_file for model in hub.OFFICIAL_MODELS.values()})
    in_hub = [file for file in weights
              if isinstance(try_to_load_from_cache(hub.REPO_ID, file, cache_dir=hub.hub_cache(),
                                                   revision=hub.revision()), str)]
    downloads = home / "downloads"
    return {"spiga_home": str(home), "models": sorted(p.name for p in models.glob("*.safetensors")),
            "named_models_ready": sorted(hub.cached_models()),
            "weights_placed_by_hand": sorted(p.name for p in downloads.glob("*.pt")),
            "mean_faces": sorted(p.name for p in (home / "models3D").glob("*.txt")),
            "hub_cache": str(hub.hub_cache()), "weights_in_hub_cache": in_hub}


def settings() -> dict[str, Any]:
    """The settings in effect: offline, the endpoint and revision, the variables that set them."""
    from . import hub

    found: dict[str, Any] = {"offline": hub.offline(), "hub_endpoint": hub.hub_endpoint(),
                             "hub_repository": hub.REPO_ID, "hub_revision": hub.revision()}
    found.update({name: os.environ[name] for name in _SETTINGS if name in os.environ})
    found.update({name: "set" if os.environ.get(name) else "not set" for name in _SECRETS})
    return found


def collect_info() -> dict[str, Any]:
    """Everything `spiga info` reports, as a JSON-ready dict."""
    from .about import mixed_installation

    return {"versions": versions(), "devices": devices(), "caches": caches(), "settings": settings(),
            "installation_problem": mixed_installation()}


def format_info(info: dict[str, Any]) -> str:
    """The text form of `collect_info()`: one `key: value` line per item, by section."""
    lines: list[str] = []
    for section, values in info.items():
        if not isinstance(values, dict):
            lines.append(f"{section}: {values if values is not None else 'none'}")
            continue
        lines.append(f"{section}:")
        width = max(map(len, values), default=0)
        for key, value in values.items():
            if isinstance(value, list):
                value = ", ".join(map(str, value)) or "none"
            lines.append(f"  {key:<{width}}  {value}")
    return "\n".join(lines)
