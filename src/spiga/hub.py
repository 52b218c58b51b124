"""Named official models: where they come from, where they are cached, how they are fetched.

`resolve_model("wflw")` returns the path of a spiga checkpoint for the official WFLW
model, fetching and converting it on first use:

1. `$SPIGA_HOME/models/spiga_<name>.safetensors`, when it exists, is used as it is: no
   download, no lock (a cache filled by hand may be read-only);
2. else the official 3D mean face (`official_mean_face`): `$SPIGA_HOME/models3D/<file>`, else
   the original release's file from GitHub at a fixed commit (`MEAN_FACE_URL`, or the
   `SPIGA_MEAN_FACE_URL` template of a mirror), checked against its SHA-256 and kept there;
3. and the official state_dict `spiga_<name>.pt`: from `$SPIGA_HOME/downloads/` when put
   there by hand, else from the authors' Hugging Face repository `aprados/spiga` at
   `REVISION`, through the Hub's own client (`huggingface_hub.hf_hub_download`), so its
   cache (`HF_HOME`, `HF_HUB_CACHE`), mirror (`HF_ENDPOINT`), token (`HF_TOKEN`,
   `hf auth login`) and offline switch (`HF_HUB_OFFLINE`) apply, and `hf download`
   prefetches;
4. `spiga.checkpoint.convert_official` writes the checkpoint of step 1, under a file
   lock, so that one process converts while the others (torchrun ranks, server workers)
   wait and then use its result.

`$SPIGA_HOME` defaults to `~/.cache/spiga`. With `SPIGA_OFFLINE=1` (or `HF_HUB_OFFLINE=1`)
nothing is downloaded (files already in the caches are still used, and a `file:` mirror
of the mean faces is read) and the error names the file, its URL, the command that fetches
it and where to put it. Retries, resumed transfers, size checks and download locks of the
weights are the Hub client's; a mean face (5 kB) is one request, written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import CheckpointError, ModelNotFound

log = logging.getLogger(__name__)

REPO_ID = "aprados/spiga"
#: The revision of `REPO_ID` the weights are fetched at: the branch the original release
#: downloads from (its URLs name `resolve/main`). `SPIGA_HUB_REVISION` overrides it (a commit
#: hash pins the files for good).
REVISION = "main"
_TRUE = ("1", "true", "yes", "on")

#: Where the official 3D mean faces come from: the original repository at the commit of its
#: last release (`spiga==0.0.6` ships the same files). `SPIGA_MEAN_FACE_URL` replaces it with
#: a mirror's template (`{file}` is the file name; `file:` URLs are read even offline).
MEAN_FACE_URL = ("https://raw.githubusercontent.com/andresprados/SPIGA/656f90a76a6800e6091bbce519550e86e04cf17f/"
                 "spiga/data/models3D/{file}")


@dataclass(frozen=True)
class OfficialMeanFace:
    """An official 3D mean-face file and the digest that any copy of it must have."""

    file: str
    size: int
    sha256: str


#: The official mean face of each point count (98: WFLW; 68: 300W, MERL-RAV, COFW-68).
OFFICIAL_MEAN_FACES: dict[int, OfficialMeanFace] = {
    98: OfficialMeanFace("mean_face_3D_98.txt", 4939, "606fa1d178a9e41541b2a0f604953af66c7b79ad740665c8c72578e9a7567c53"),
    68: OfficialMeanFace("mean_face_3D_68.txt", 3420, "59ee862825ed5444f50265b535b9c2cd4af017dc45c10fe70c73d0786feaccf1"),
}


@dataclass(frozen=True)
class OfficialModel:
    """An official configuration: its weights file, and the model size it converts to."""

    config: str
    weights_file: str
    model_size: str = "official"


OFFICIAL_MODELS: dict[str, OfficialModel] = {
    "wflw": OfficialModel("wflw", "spiga_wflw.pt"),
    "300wpublic": OfficialModel("300wpublic", "spiga_300wpublic.pt"),
    "300wprivate": OfficialModel("300wprivate", "spiga_300wprivate.pt"),
    "merlrav": OfficialModel("merlrav", "spiga_merlrav.pt"),
    # COFW68 is evaluated with the 300W private model, as in the original release.
    "cofw68": OfficialModel("cofw68", "spiga_300wprivate.pt"),
}


def spiga_home() -> Path:
    """The cache folder: `$SPIGA_HOME`, or `~/.cache/spiga`."""
    return Path(os.environ.get("SPIGA_HOME") or Path.home() / ".cache" / "spiga")


def offline() -> bool:
    """`SPIGA_OFFLINE` (or Hugging Face's `HF_HUB_OFFLINE`) is set to 1/true/yes/on."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("SPIGA_OFFLINE", "HF_HUB_OFFLINE"))


def revision() -> str:
    """The revision of `REPO_ID` in effect (`SPIGA_HUB_REVISION`, else `REVISION`)."""
    return os.environ.get("SPIGA_HUB_REVISION") or REVISION


def hub_endpoint() -> str:
    """The Hub endpoint in effect (`HF_ENDPOINT`, else huggingface.co), read at each call."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_cache() -> Path:
    """The Hub client's cache folder, from the environment at each call (`HF_HUB_CACHE`, else
    `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def weights_url(file: str) -> str:
    """Where `file` is downloaded from (the endpoint and revision in effect)."""
    return f"{hub_endpoint()}/{REPO_ID}/resolve/{revision()}/{file}"


def mean_face_url(file: str) -> str:
    """Where the mean face `file` is downloaded from (`SPIGA_MEAN_FACE_URL` or `MEAN_FACE_URL`)."""
    return (os.environ.get("SPIGA_MEAN_FACE_URL") or MEAN_FACE_URL).replace("{file}", file)


def _mean_face_hint(file: str) -> str:
    url = mean_face_url(file)
    return f"download {url} and put it at {spiga_home() / 'models3D' / file} (or set SPIGA_MEAN_FACE_URL to a mirror)"


def official_mean_face(num_landmarks: int) -> Path:
    """The path of the official 3D mean face with `num_landmarks` points (98 or 68):
    `$SPIGA_HOME/models3D/<file>`, downloaded there on first use (its SHA-256 checked).
    Raises `ModelNotFound` in one line saying where to get it."""
    try:
        official = OFFICIAL_MEAN_FACES[num_landmarks]
    except KeyError:
        raise ModelNotFound(f"no official mean face has {num_landmarks} points (only "
                            f"{', '.join(map(str, OFFICIAL_MEAN_FACES))}); pass a mean-face file") from None
    path = spiga_home() / "models3D" / official.file
    if path.is_file():
        return path
    url = mean_face_url(official.file)
    if offline() and not url.startswith("file:"):
        raise ModelNotFound(f"{official.file} (the official 3D mean face) is not in the cache and SPIGA_OFFLINE / "
                            f"HF_HUB_OFFLINE forbids downloading it: {_mean_face_hint(official.file)}")
    data = _download_small(url, official)
    from .io import write_output

    log.info("downloaded %s to %s", url, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_output(path, data)
    return path


def _download_small(url: str, official: OfficialMeanFace) -> bytes:
    """The bytes at `url`, which must be `official`'s (size and SHA-256), in one request."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - an http(s) or file: URL by design
            data = response.read(official.size + 1)
    except urllib.error.HTTPError as exc:
        raise ModelNotFound(f"{official.file}: {url} answered HTTP {exc.code} {exc.reason}: "
                            f"{_mean_face_hint(official.file)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise ModelNotFound(f"{official.file}: cannot download {url} ({reason}): "
                            f"{_mean_face_hint(official.file)}") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != official.size or digest != official.sha256:
        raise ModelNotFound(f"{official.file}: {url} sent {len(data)}{'+' if len(data) > official.size else ''} bytes "
                            f"with SHA-256 {digest[:16]}..., not the official file ({official.size} bytes, "
                            f"{official.sha256[:16]}...): {_mean_face_hint(official.file)}")
    return data


def fetch_command(file: str) -> str:
    """The Hugging Face command that puts `file` into the Hub's cache, where spiga finds it."""
    return f"hf download {REPO_ID} {file} --revision {revision()}"


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold the cache's lock `name` (a file under $SPIGA_HOME/locks), waiting for another
    process (or thread) that holds it."""
    folder = spiga_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process converting %s (lock %s)", name, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _where_to_get_it(name: str, file: str) -> str:
    """The ways to provide `file` by hand, for an error message."""
    converted = spiga_home() / "models" / f"spiga_{name}.safetensors"
    mean_face = OFFICIAL_MEAN_FACES[_points(name)].file
    return (f"model {name!r} needs it and the 3D mean face {mean_face}. Fetch it with "
            f"`{fetch_command(file)}` (the Hub's cache, {hub_cache()}), or download {weights_url(file)} and put it "
            f"at {spiga_home() / 'downloads' / file}; a converted checkpoint at {converted} is used as it is")


def _points(name: str) -> int:
    from .landmarks import landmark_set_for

    return landmark_set_for(OFFICIAL_MODELS[name].config).num_landmarks


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (the Hub client's run to several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a Hub client error, looking through its causes."""
    while exc is not None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        exc = exc.__cause__ or exc.__context__
    return None


def _download_error(name: str, file: str, exc: Exception) -> ModelNotFound:
    """One line for a failed `hf_hub_download`: what the server said, or why it was not asked."""
    from huggingface_hub.utils import LocalEntryNotFoundError

    url = weights_url(file)
    status = _http_status(exc)
    if status in (401, 403):
        return ModelNotFound(f"model {name!r}: {url} answered HTTP {status}: the Hub refused the token sent (HF_TOKEN "
                             "or the one `hf auth login` saved); check it, or unset it for this public repository")
    if status == 404:
        return ModelNotFound(f"model {name!r}: {file} not found at {url} (HTTP 404): check HF_ENDPOINT and "
                             f"SPIGA_HUB_REVISION")
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__
        reason = (f"{hub_endpoint()} cannot be reached ({_one_line(cause)})" if cause is not None
                  else "the Hub client is offline (HF_HUB_OFFLINE)")
        return ModelNotFound(f"{file} is not in the cache and {reason}: {_where_to_get_it(name, file)}")
    return ModelNotFound(f"model {name!r}: cannot download {url} ({_one_line(exc)}): {_where_to_get_it(name, file)}")


def fetch_official_weights(name: str, progress: bool = True) -> Path:
    """The official state_dict of model `name`: put by hand in `$SPIGA_HOME/downloads`, or from
    the Hub (its cache first; offline, only its cache). Raises `ModelNotFound` in one line
    saying what to fetch and where to put it."""
    file = OFFICIAL_MODELS[name].weights_file
    by_hand = spiga_home() / "downloads" / file
    if by_hand.is_file():
        return by_hand
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import silent_tqdm

    if offline():  # the Hub's cache only, read without the client's network calls (its user-agent probe too)
        cached = try_to_load_from_cache(REPO_ID, file, cache_dir=hub_cache(), revision=revision())
        if isinstance(cached, str):
            return Path(cached)
        raise ModelNotFound(f"{file} is not in the cache and SPIGA_OFFLINE / HF_HUB_OFFLINE forbids downloading it: "
                            f"{_where_to_get_it(name, file)}")
    try:
        path = hf_hub_download(REPO_ID, file, revision=revision(), cache_dir=hub_cache(), endpoint=hub_endpoint(),
                               tqdm_class=None if progress else silent_tqdm)
    except Exception as exc:  # the client's errors (HTTP, network, offline, a broken transfer): one line
        raise _download_error(name, file, exc) from None
    return Path(path)


def resolve_model(model: str | os.PathLike, progress: bool = True) -> Path:
    """A checkpoint path for `model`: an existing file, or a named official model
    (downloaded and converted on first use, by one process at a time)."""
    path = Path(model)
    if path.is_file():
        return path
    name = str(model)
    if name not in OFFICIAL_MODELS:
        if path.suffix or os.sep in name:
            raise ModelNotFound(f"{name}: no such checkpoint file")
        known = ", ".join(OFFICIAL_MODELS)
        raise ModelNotFound(f"unknown model {name!r}: give a checkpoint path or one of {known}")
    target = spiga_home() / "models" / f"spiga_{name}.safetensors"
    if target.is_file():  # no lock: a cache filled by hand may be read-only
        return target
    points = _points(name)
    try:
        mean_face = official_mean_face(points)  # 5 kB: before the weights, whose download takes a while
    except ModelNotFound as mean_face_missing:
        if offline():  # say every missing file at once
            try:
                fetch_official_weights(name, progress)
            except ModelNotFound as weights_missing:
                raise ModelNotFound(f"{weights_missing}; and {mean_face_missing}") from None
        raise
    weights = fetch_official_weights(name, progress)
    with _locked(f"model-{name}"):
        if target.is_file():  # converted by another process while this one waited
            return target
        return _convert(name, weights, mean_face, target)


def _convert(name: str, weights: Path, mean_face: Path, target: Path) -> Path:
    from .checkpoint import convert_official
    from .landmarks import landmark_set_for
    from .model import ModelConfig

    official = OFFICIAL_MODELS[name]
    landmarks = landmark_set_for(official.config)
    log.info("converting %s to %s", weights, target)
    try:
        config = ModelConfig.sized(official.model_size, landmarks.num_landmarks, landmarks.num_edges)
        return convert_official(weights, official.config, mean_face, target, config)
    except CheckpointError as exc:
        again = (f"delete {weights}" if weights.parent == spiga_home() / "downloads"
                 else f"run `{fetch_command(weights.name)} --force-download`")
        raise ModelNotFound(f"{exc}. To download it again, {again}") from None


def cached_models() -> dict[str, Path]:
    """The converted official models present in `$SPIGA_HOME/models` (name -> path)."""
    folder = spiga_home() / "models"
    return {name: folder / f"spiga_{name}.safetensors" for name in OFFICIAL_MODELS
            if (folder / f"spiga_{name}.safetensors").is_file()}
