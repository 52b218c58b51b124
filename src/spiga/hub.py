"""Named official models: where they come from, where they are cached, how they are fetched.

`resolve_model("wflw")` returns the path of a spiga checkpoint for the official WFLW
model, downloading and converting it on first use:

1. the official state_dict `spiga_<name>.pt` from the authors' Hugging Face repository;
2. the 3D mean face from the original repository at a fixed commit (sha256-verified);
3. `spiga.checkpoint.convert_official` into `$SPIGA_HOME/models/spiga_<name>.safetensors`.

`$SPIGA_HOME` defaults to `~/.cache/spiga`. Downloads go to a temporary file that is
renamed when complete, so an interrupted download never leaves a partial file under
the final name. Offline, the error says which file to put where.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import CheckpointError, ModelNotFound, SpigaError

log = logging.getLogger(__name__)

WEIGHTS_URL = "https://huggingface.co/aprados/spiga/resolve/main/{file}?download=true"
MEAN_FACE_URL = ("https://raw.githubusercontent.com/andresprados/SPIGA/656f90a76a6800e6091bbce519550e86e04cf17f/"
                 "spiga/data/models3D/{file}")
MEAN_FACE_SHA256 = {
    "mean_face_3D_98.txt": "606fa1d178a9e41541b2a0f604953af66c7b79ad740665c8c72578e9a7567c53",
    "mean_face_3D_68.txt": "59ee862825ed5444f50265b535b9c2cd4af017dc45c10fe70c73d0786feaccf1",
}


@dataclass(frozen=True)
class OfficialModel:
    """An official configuration: its weights file and mean-face file."""

    config: str
    weights_file: str
    mean_face_file: str
    model_size: str = "official"


OFFICIAL_MODELS: dict[str, OfficialModel] = {
    "wflw": OfficialModel("wflw", "spiga_wflw.pt", "mean_face_3D_98.txt"),
    "300wpublic": OfficialModel("300wpublic", "spiga_300wpublic.pt", "mean_face_3D_68.txt"),
    "300wprivate": OfficialModel("300wprivate", "spiga_300wprivate.pt", "mean_face_3D_68.txt"),
    "merlrav": OfficialModel("merlrav", "spiga_merlrav.pt", "mean_face_3D_68.txt"),
    # COFW68 is evaluated with the 300W private model, as in the original release.
    "cofw68": OfficialModel("cofw68", "spiga_300wprivate.pt", "mean_face_3D_68.txt"),
}


def spiga_home() -> Path:
    """The cache folder: `$SPIGA_HOME`, or `~/.cache/spiga`."""
    return Path(os.environ.get("SPIGA_HOME") or Path.home() / ".cache" / "spiga")


def _url(template_env: str, template: str, file: str) -> str:
    return os.environ.get(template_env, template).format(file=file)


def download(url: str, destination: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch `url` to `destination` atomically, checking size and (when given) sha256."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "spiga"})
        with urllib.request.urlopen(request, timeout=60) as response, os.fdopen(fd, "wb") as handle:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name,
                      disable=not progress, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise SpigaError(f"download of {url} stopped after {received} of {total} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise SpigaError(f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, destination)
        return destination
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelNotFound(
            f"cannot download {url} ({reason}). Offline? Fetch that file on a machine with internet and put it "
            f"at {destination}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_mean_face(file: str, progress: bool = True) -> Path:
    """The official mean-face text file, from the cache or downloaded (sha256-verified)."""
    path = spiga_home() / "models3D" / file
    expected = MEAN_FACE_SHA256.get(file)
    if path.is_file():
        if expected is None or _sha256(path) == expected:
            return path
        raise ModelNotFound(f"{path}: sha256 does not match the official {file}; delete it to download it again")
    return download(_url("SPIGA_MEAN_FACE_URL", MEAN_FACE_URL, file), path, expected, progress)


def fetch_official_weights(file: str, progress: bool = True) -> Path:
    """The official state_dict, from the cache or downloaded."""
    path = spiga_home() / "downloads" / file
    if path.is_file():
        return path
    return download(_url("SPIGA_WEIGHTS_URL", WEIGHTS_URL, file), path, None, progress)


def resolve_model(model: str | os.PathLike, progress: bool = True) -> Path:
    """A checkpoint path for `model`: an existing file, or a named official model
    (downloaded and converted on first use)."""
    from .checkpoint import convert_official
    from .landmarks import landmark_set_for
    from .model import ModelConfig

    path = Path(model)
    if path.is_file():
        return path
    name = str(model)
    if name not in OFFICIAL_MODELS:
        if path.suffix or os.sep in name:
            raise ModelNotFound(f"{name}: no such checkpoint file")
        known = ", ".join(OFFICIAL_MODELS)
        raise ModelNotFound(f"unknown model {name!r}: give a checkpoint path or one of {known}")
    official = OFFICIAL_MODELS[name]
    target = spiga_home() / "models" / f"spiga_{name}.safetensors"
    if target.is_file():
        return target
    weights = fetch_official_weights(official.weights_file, progress)
    mean_face = fetch_mean_face(official.mean_face_file, progress)
    log.info("converting %s to %s", weights, target)
    try:
        landmarks = landmark_set_for(official.config)
        config = ModelConfig.sized(official.model_size, landmarks.num_landmarks, landmarks.num_edges)
        return convert_official(weights, official.config, mean_face, target, config)
    except CheckpointError as exc:
        raise ModelNotFound(f"{exc}. Delete {weights} to download it again") from None
