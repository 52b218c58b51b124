"""Named official models: where they come from, where they are cached, how they are fetched.

`resolve_model("wflw")` returns the path of a spiga checkpoint for the official WFLW
model, downloading and converting it on first use:

1. the official state_dict `spiga_<name>.pt` from the authors' Hugging Face repository;
2. the 3D mean face from the original repository at a fixed commit (size and sha256
   verified);
3. `spiga.checkpoint.convert_official` into `$SPIGA_HOME/models/spiga_<name>.safetensors`.

`$SPIGA_HOME` defaults to `~/.cache/spiga`. Many processes may ask at once (every
rank of a `torchrun`, every worker of a server): a file lock per model and per file
lets one fetch and convert while the others wait and then use its result. A download
goes to a `.part` file renamed when complete and verified; a broken transfer is
retried, resuming where it stopped (HTTP Range). With `SPIGA_OFFLINE=1` (or
`HF_HUB_OFFLINE=1`) nothing is downloaded and the error says which file to put where.

Plain HTTP is used rather than `huggingface_hub`: the mean face is a plain file on
GitHub, so one downloader is needed anyway; the URL templates can point at any static
mirror (`SPIGA_WEIGHTS_URL`, `SPIGA_MEAN_FACE_URL`), which is also how the downloads are
tested offline against a local server; and the cache stays one folder of plain files
that can be filled by hand. From Hugging Face's redirect, the `X-Linked-Size` header
still gives the file's size when the final server sends no `Content-Length`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from .errors import CheckpointError, ModelNotFound

log = logging.getLogger(__name__)

WEIGHTS_URL = "https://huggingface.co/aprados/spiga/resolve/main/{file}?download=true"
MEAN_FACE_URL = ("https://raw.githubusercontent.com/andresprados/SPIGA/656f90a76a6800e6091bbce519550e86e04cf17f/"
                 "spiga/data/models3D/{file}")
MEAN_FACE_SHA256 = {
    "mean_face_3D_98.txt": "606fa1d178a9e41541b2a0f604953af66c7b79ad740665c8c72578e9a7567c53",
    "mean_face_3D_68.txt": "59ee862825ed5444f50265b535b9c2cd4af017dc45c10fe70c73d0786feaccf1",
}
MEAN_FACE_SIZE = {"mean_face_3D_98.txt": 4939, "mean_face_3D_68.txt": 3420}

#: Seconds to wait before the second, third, ... attempt of a broken download.
RETRY_DELAYS: tuple[float, ...] = (1.0, 4.0, 15.0)
#: Seconds without a byte from the server before an attempt counts as broken.
TIMEOUT = 60.0
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")


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


def offline() -> bool:
    """`SPIGA_OFFLINE` (or Hugging Face's `HF_HUB_OFFLINE`) is set to 1/true/yes/on."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("SPIGA_OFFLINE", "HF_HUB_OFFLINE"))


def _url(template_env: str, template: str, file: str) -> str:
    return os.environ.get(template_env, template).format(file=file)


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
        log.info("waiting for another process fetching %s (lock %s)", name, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class _Broken(Exception):
    """A transfer that stopped early or a server error worth another attempt."""


class _Unreachable(_Broken):
    """No connection at all (no name resolution, connection refused): offline, most likely;
    not worth waiting for another attempt."""


class _Refused(Exception):
    """An answer that another attempt will not change (404, 403, a wrong size)."""


class _RedirectSizes(urllib.request.HTTPRedirectHandler):
    """Follows redirects (keeping the Range header), noting Hugging Face's `X-Linked-Size`
    (the size of the file behind the redirect)."""

    def __init__(self) -> None:
        super().__init__()
        self.linked_size: int | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        size = (headers.get("X-Linked-Size") or "").strip()
        if size.isdigit():
            self.linked_size = int(size)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The file's whole size as the response states it (Content-Range, else Content-Length)."""
    content_range = response.headers.get("Content-Range") or ""
    if response.status == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = (response.headers.get("Content-Length") or "").strip()
    return offset + int(length) if length.isdigit() else None


def _attempt(url: str, part: Path, expected: int | None, progress: bool) -> int | None:
    """One attempt: append to `part` from its current size (a Range request when it is not
    empty). Returns the file's size where known; raises `_Broken` or `_Refused`."""
    offset = part.stat().st_size if part.exists() else 0
    if expected is not None and offset == expected:
        return expected
    headers = {"User-Agent": "spiga", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    redirects = _RedirectSizes()
    try:
        response = urllib.request.build_opener(redirects).open(urllib.request.Request(url, headers=headers),
                                                               timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Broken(f"HTTP {exc.code} {exc.reason}") from None
        raise _Refused(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except ValueError as exc:  # not a URL urllib can open: check the SPIGA_*_URL templates
        raise _Refused(f"{url}: not a URL spiga can download ({exc})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        unreachable = isinstance(reason, (socket.gaierror, ConnectionRefusedError))
        raise (_Unreachable if unreachable else _Broken)(str(reason)) from None
    with response:
        if offset and (response.status != 206 or _range_start(response) != offset):
            offset = 0  # the server ignored the Range (or answered another one): start again
        total = _total_size(response, offset)
        known = [size for size in (expected, redirects.linked_size, total) if size is not None]
        if len(set(known)) > 1:
            other = next(size for size in known if size != known[0])
            raise _Refused(f"{url}: the server offers {other} bytes, expected {known[0]}")
        total = known[0] if known else None
        received = offset
        with part.open("ab" if offset else "wb") as handle, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[1:-len(".part")],
                     disable=not progress, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:  # the network's; the disk's pass through
                    raise _Broken(f"connection lost after {received} bytes ({exc})") from None
                if not chunk:
                    break
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if total is not None and received > total:
                    raise _Refused(f"{url}: the server sent more than the {total} bytes expected")
    if total is not None and received < total:
        raise _Broken(f"connection closed after {received} of {total} bytes")
    return total


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """N of a `Content-Range: bytes N-M/T` answer."""
    value = (response.headers.get("Content-Range") or "").strip()
    start = value.removeprefix("bytes ").split("-", 1)[0]
    return int(start) if value.startswith("bytes ") and start.isdigit() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _put_it_there(url: str, destination: Path) -> str:
    return f"fetch {url} by other means and put it at {destination}"


def download(url: str, destination: Path, sha256: str | None = None, progress: bool = True,
             size: int | None = None) -> Path:
    """Fetch `url` to `destination` atomically: retried and resumed (HTTP Range) when the
    transfer breaks, the size checked against `size`, the server's Content-Length /
    Content-Range or Hugging Face's X-Linked-Size (whichever are known), and `sha256`
    when given. Call it under the destination's lock (`_locked`): the `.part` file is
    shared by name. Raises `ModelNotFound` saying what failed and where to put the file.
    """
    if offline():
        raise ModelNotFound(f"{destination.name} is not in the cache and SPIGA_OFFLINE / HF_HUB_OFFLINE forbids "
                            f"downloading it: {_put_it_there(url, destination)}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(f".{destination.name}.part")
    part.unlink(missing_ok=True)  # left by a process killed mid-download: its origin is unknown
    expected = size
    try:
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                expected = _attempt(url, part, expected, progress)
                break
            except _Broken as exc:
                if isinstance(exc, _Unreachable) or attempt == len(RETRY_DELAYS):
                    tries = f"; {attempt + 1} attempts" if attempt else ""
                    raise ModelNotFound(f"cannot download {url} ({exc}{tries}). Offline? Then "
                                        f"{_put_it_there(url, destination)} (SPIGA_OFFLINE=1 stops spiga from "
                                        "trying)") from None
                have = part.stat().st_size if part.exists() else 0
                log.warning("download of %s: %s; attempt %d of %d in %.0f s, resuming at byte %d", url, exc,
                            attempt + 2, len(RETRY_DELAYS) + 1, RETRY_DELAYS[attempt], have)
                time.sleep(RETRY_DELAYS[attempt])
            except _Refused as exc:
                raise ModelNotFound(f"cannot download: {exc}; {_put_it_there(url, destination)}") from None
        if sha256 is not None and (digest := _sha256(part)) != sha256:
            raise ModelNotFound(f"download of {url} has sha256 {digest}, expected {sha256}; "
                                f"{_put_it_there(url, destination)}")
        os.replace(part, destination)
        return destination
    finally:
        part.unlink(missing_ok=True)


def fetch_mean_face(file: str, progress: bool = True) -> Path:
    """The official mean-face text file, from the cache or downloaded (size and sha256 verified)."""
    path = spiga_home() / "models3D" / file
    expected = MEAN_FACE_SHA256.get(file)
    if not path.is_file():
        with _locked(f"models3D-{file}"):
            if not path.is_file():  # else fetched by another process while this one waited
                return download(_url("SPIGA_MEAN_FACE_URL", MEAN_FACE_URL, file), path, expected, progress,
                                MEAN_FACE_SIZE.get(file))
    if expected is None or _sha256(path) == expected:
        return path
    raise ModelNotFound(f"{path}: sha256 does not match the official {file}; delete it to download it again")


def fetch_official_weights(file: str, progress: bool = True) -> Path:
    """The official state_dict, from the cache or downloaded."""
    path = spiga_home() / "downloads" / file
    if path.is_file():
        return path
    with _locked(f"downloads-{file}"):
        if path.is_file():  # fetched by another process while this one waited
            return path
        return download(_url("SPIGA_WEIGHTS_URL", WEIGHTS_URL, file), path, None, progress)


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
    with _locked(f"model-{name}"):
        if target.is_file():  # converted by another process while this one waited
            return target
        return _fetch_and_convert(name, target, progress)


def _fetch_and_convert(name: str, target: Path, progress: bool) -> Path:
    from .checkpoint import convert_official
    from .landmarks import landmark_set_for
    from .model import ModelConfig

    official = OFFICIAL_MODELS[name]
    weights = fetch_official_weights(official.weights_file, progress)
    mean_face = fetch_mean_face(official.mean_face_file, progress)
    log.info("converting %s to %s", weights, target)
    try:
        landmarks = landmark_set_for(official.config)
        config = ModelConfig.sized(official.model_size, landmarks.num_landmarks, landmarks.num_edges)
        return convert_official(weights, official.config, mean_face, target, config)
    except CheckpointError as exc:
        raise ModelNotFound(f"{exc}. Delete {weights} to download it again") from None
