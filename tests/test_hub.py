"""Named models through the Hugging Face Hub client, against a local server that answers as
the Hub does; the cache, hand-placed files, offline errors; the mean faces from a local
server standing for GitHub. Never the real network."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from spiga import hub
from spiga.errors import ModelNotFound
from spiga.hub import OFFICIAL_MEAN_FACES, official_mean_face
from spiga.landmarks import IBUG_68, WFLW_98, read_mean_face
from spiga.model import ModelConfig
from spiga.testing import random_model

from conftest import UPSTREAM_MEAN_FACES

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = f"/{hub.REPO_ID}/resolve/"


class HubServer:
    """The Hub's `resolve` endpoint on 127.0.0.1, serving the files of `folder`, plus a second
    origin (another port) standing for its CDN.

    `HEAD|GET /{repo}/resolve/{revision}/{file}` answers with `X-Repo-Commit`, `ETag` (the
    file's sha256, as the Hub's LFS files) and `Content-Length`. `behaviour[file]` is a list of
    what the next requests for `file` get, one entry per request, then normal service:
    "redirect" (302 to the CDN with `X-Linked-Etag` / `X-Linked-Size`, as the Hub for LFS
    files), "drop" (GET: half the body, then the connection closes), "drop-all" (GET: the
    headers only, then closes), "no-commit" (no `X-Repo-Commit`), or an HTTP status such as
    404 or 401 (with the Hub's `X-Error-Code`). Range requests (`bytes=N-`) get 206.
    `requests` logs (method, path, Range header or None).
    """

    def __init__(self, folder):
        self.folder = folder
        self.behaviour: dict[str, list] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head: bool) -> None:
                path = self.path.split("?")[0]
                server.requests.append(("HEAD" if head else "GET", path, self.headers.get("Range")))
                file = path.rsplit("/", 1)[-1]
                queue = server.behaviour.get(file) or []
                mode = queue.pop(0) if queue else "normal"
                data = (server.folder / file).read_bytes() if (server.folder / file).is_file() else None
                if isinstance(mode, int) or data is None:
                    self.error(mode if isinstance(mode, int) else 404)
                    return
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"{server.cdn_url}/cdn/{file}")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("X-Linked-Etag", etag)
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if mode != "no-commit":
                    self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if mode in ("drop", "drop-all"):
                    self.wfile.write(body[: len(body) // 2] if mode == "drop" else b"")
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def error(self, status: int) -> None:
                self.send_response(status)
                if status == 404:
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.httpd, self.cdn)]

    def gets(self, file: str) -> list[str | None]:
        """The Range headers of the GET requests for `file` (None: the whole file)."""
        return [r for method, path, r in self.requests if method == "GET" and path.endswith("/" + file)]


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    hub_server = HubServer(www)
    for thread in hub_server.threads:
        thread.start()
    yield hub_server
    for httpd in (hub_server.httpd, hub_server.cdn):
        httpd.shutdown()
        httpd.server_close()


def register_tiny(www) -> hub.OfficialModel:
    """Serve a tiny 'official' 98-point state_dict from `www` as spiga_tiny.pt."""
    model, _ = random_model("tiny", WFLW_98, seed=0)
    torch.save(model.state_dict(), www / "spiga_tiny.pt")
    return hub.OfficialModel("wflw", "spiga_tiny.pt", model_size="tiny")


def place_mean_faces(home) -> None:
    """Both mean faces in `home`/models3D, as a user who fetched them earlier has them: the
    official files where ../shared is present, else stand-ins (a file in the cache is used
    as it is, so the weights' path is tested either way)."""
    from spiga.landmarks.mean_face import write_mean_face
    from spiga.testing import random_mean_face

    folder = home / "models3D"
    folder.mkdir(parents=True, exist_ok=True)
    for points, official in OFFICIAL_MEAN_FACES.items():
        upstream = UPSTREAM_MEAN_FACES / official.file
        if upstream.is_file():
            (folder / official.file).write_bytes(upstream.read_bytes())
        else:
            write_mean_face(folder / official.file, random_mean_face(points), WFLW_98 if points == 98 else IBUG_68)


def isolate(monkeypatch, tmp_path, endpoint: str, mean_faces: bool = True) -> None:
    """Empty caches (but for the mean faces, unless not `mean_faces`), the local endpoint, no
    token, online, fast retries."""
    monkeypatch.setenv("SPIGA_HOME", str(tmp_path / "home"))
    if mean_faces:
        place_mean_faces(tmp_path / "home")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for name in ("SPIGA_OFFLINE", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", "SPIGA_HUB_REVISION",
                 "SPIGA_MEAN_FACE_URL"):
        monkeypatch.delenv(name, raising=False)
    import huggingface_hub.constants as constants
    import huggingface_hub.file_download as file_download

    # the client's user-agent probe (GET /api/agent-harnesses) goes to the endpoint read at its import
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(file_download.time, "sleep", lambda seconds: None)  # the client's pause before a resume


@pytest.fixture
def tiny_official(tmp_path, monkeypatch, server):
    """A tiny 'official' model served by the local Hub, registered under the name `tinytest`."""
    monkeypatch.setitem(hub.OFFICIAL_MODELS, "tinytest", register_tiny(server.folder))
    isolate(monkeypatch, tmp_path, server.url)
    return server.folder, server, tmp_path / "home"


def snapshot(tmp_path) -> "os.PathLike":
    return tmp_path / "hf" / "hub" / "models--aprados--spiga" / "snapshots" / COMMIT / "spiga_tiny.pt"


def test_download_convert_and_cache(tiny_official, tmp_path):
    www, server, home = tiny_official
    path = hub.resolve_model("tinytest", progress=False)
    assert path == home / "models" / "spiga_tinytest.safetensors"
    assert [(m, p) for m, p, _ in server.requests] == [("HEAD", f"{RESOLVE}main/spiga_tiny.pt"),
                                                      ("GET", f"{RESOLVE}main/spiga_tiny.pt")]
    # the Hub client's cache (HF_HOME): the blob is named by the ETag, the ref by X-Repo-Commit
    data = (www / "spiga_tiny.pt").read_bytes()
    repo = tmp_path / "hf" / "hub" / "models--aprados--spiga"
    assert (repo / "blobs" / hashlib.sha256(data).hexdigest()).read_bytes() == data
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert snapshot(tmp_path).read_bytes() == data
    from spiga.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    assert checkpoint.config == ModelConfig.sized("tiny", 98, 15)
    assert np.allclose(checkpoint.model.mean_face_3d.numpy(), read_mean_face(official_mean_face(98), WFLW_98))
    # second use: the converted checkpoint, no request
    count = len(server.requests)
    assert hub.resolve_model("tinytest", progress=False) == path
    assert len(server.requests) == count
    assert hub.cached_models() == {"tinytest": path}


def test_revision_is_pinned_and_overridable(tiny_official, monkeypatch):
    www, server, home = tiny_official
    monkeypatch.setenv("SPIGA_HUB_REVISION", COMMIT)
    hub.resolve_model("tinytest", progress=False)
    assert {p for _, p, _ in server.requests} == {f"{RESOLVE}{COMMIT}/spiga_tiny.pt"}


def test_redirect_to_the_cdn(tiny_official, tmp_path):
    """LFS files: the Hub answers 302 to another origin with X-Linked-Etag and X-Linked-Size;
    the client takes the metadata from the redirect and fetches the file from the CDN."""
    www, server, home = tiny_official
    server.behaviour["spiga_tiny.pt"] = ["redirect"]
    hub.resolve_model("tinytest", progress=False)
    assert ("GET", "/cdn/spiga_tiny.pt", None) in server.requests
    assert snapshot(tmp_path).read_bytes() == (www / "spiga_tiny.pt").read_bytes()


def test_a_server_without_the_commit_header_is_not_a_hub(tiny_official):
    www, server, home = tiny_official
    server.behaviour["spiga_tiny.pt"] = ["no-commit"]
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "\n" not in message and "X-Repo-Commit" in message and "spiga_tiny.pt" in message


def test_an_interrupted_transfer_resumes_with_a_range_request(tiny_official, tmp_path):
    www, server, home = tiny_official
    server.behaviour["spiga_tiny.pt"] = ["normal", "drop"]  # the HEAD is served, the first GET breaks
    hub.resolve_model("tinytest", progress=False)
    size = (www / "spiga_tiny.pt").stat().st_size
    first, again = server.gets("spiga_tiny.pt")  # one break, one more request: resumed where the bytes
    assert first is None                         # written stop (none when the break came within the
    assert again is None or again.startswith("bytes=") and int(again[6:-1]) <= size // 2  # client's first chunk)
    assert snapshot(tmp_path).read_bytes() == (www / "spiga_tiny.pt").read_bytes()
    assert not [p for p in (tmp_path / "hf").rglob("*.incomplete")]


def test_a_transfer_that_always_breaks_fails_in_one_line(tiny_official):
    www, server, home = tiny_official
    server.behaviour["spiga_tiny.pt"] = ["normal"] + ["drop-all"] * 10
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "\n" not in message and "cannot download" in message and "spiga_tiny.pt" in message
    assert not (home / "models" / "spiga_tinytest.safetensors").exists()


def test_404_names_the_model_and_file(tiny_official):
    www, server, home = tiny_official
    server.behaviour["spiga_tiny.pt"] = [404]
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "\n" not in message and "'tinytest'" in message and "spiga_tiny.pt not found" in message
    assert f"{server.url}{RESOLVE}main/spiga_tiny.pt" in message and "404" in message


def test_401_is_about_the_token(tiny_official, monkeypatch):
    www, server, home = tiny_official
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    server.behaviour["spiga_tiny.pt"] = [401]
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "\n" not in message and "HTTP 401" in message and "HF_TOKEN" in message and "'tinytest'" in message


@pytest.mark.parametrize("variable", ["SPIGA_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_touches_the_network(tiny_official, monkeypatch, variable):
    www, server, home = tiny_official
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "\n" not in message and "spiga_tiny.pt is not in the cache" in message and "SPIGA_OFFLINE" in message
    assert f"{server.url}{RESOLVE}main/spiga_tiny.pt" in message
    assert "hf download aprados/spiga spiga_tiny.pt --revision main" in message
    assert str(home / "downloads" / "spiga_tiny.pt") in message
    assert server.requests == []
    # with the file put where the message says, the model is converted offline
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / "spiga_tiny.pt").write_bytes((www / "spiga_tiny.pt").read_bytes())
    assert hub.resolve_model("tinytest", progress=False).is_file()
    assert server.requests == []


def test_offline_uses_the_hub_cache(tiny_official, monkeypatch):
    """A file fetched earlier (by spiga or `hf download`) is used offline."""
    www, server, home = tiny_official
    weights = hub.fetch_official_weights("tinytest", progress=False)
    count = len(server.requests)
    monkeypatch.setenv("SPIGA_OFFLINE", "1")
    assert hub.fetch_official_weights("tinytest", progress=False) == weights
    assert hub.resolve_model("tinytest", progress=False).is_file()
    assert len(server.requests) == count


def test_unreachable_endpoint_fails_in_one_line(tiny_official, monkeypatch):
    www, server, home = tiny_official
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "\n" not in message and "cannot be reached" in message
    assert str(home / "downloads" / "spiga_tiny.pt") in message


def test_a_broken_file_says_how_to_fetch_it_again(tiny_official):
    www, server, home = tiny_official
    (www / "spiga_tiny.pt").write_bytes(b"")  # the server now sends an empty, unloadable file
    with pytest.raises(ModelNotFound, match="--force-download"):
        hub.resolve_model("tinytest", progress=False)
    assert not (home / "models" / "spiga_tinytest.safetensors").exists()


def test_unknown_names():
    with pytest.raises(ModelNotFound, match="unknown model 'nope'.*wflw"):
        hub.resolve_model("nope")
    with pytest.raises(ModelNotFound, match="no such checkpoint file"):
        hub.resolve_model("missing/model.safetensors")


# --------------------------------------------------------------------------- by hand, from the command line


def test_a_converted_model_placed_by_hand_is_used_without_download(tmp_path, monkeypatch, tiny_checkpoint,
                                                                    image_file):
    """`$SPIGA_HOME/models/spiga_<name>.safetensors` is used for `--model <name>` (and `--init`,
    which resolves names the same way) with no request: the endpoint does not even exist."""
    from spiga.cli import main

    isolate(monkeypatch, tmp_path, "http://127.0.0.1:9")
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    (models / "spiga_wflw.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    assert hub.resolve_model("wflw") == models / "spiga_wflw.safetensors"
    out = tmp_path / "out.json"
    assert main(["align", str(image_file), "--model", "wflw", "--box", "10", "10", "40", "40", "--json",
                 str(out), "--device", "cpu"]) == 0
    assert out.is_file()


def test_offline_align_names_every_file_in_one_message(tmp_path, monkeypatch, image_file, capsys):
    from spiga.cli import main

    isolate(monkeypatch, tmp_path, "https://huggingface.co", mean_faces=False)
    monkeypatch.setenv("SPIGA_OFFLINE", "1")
    assert main(["align", str(image_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("spiga: error: spiga_wflw.pt is not in the cache")
    assert "https://huggingface.co/aprados/spiga/resolve/main/spiga_wflw.pt" in err
    assert "hf download aprados/spiga spiga_wflw.pt" in err
    assert str(tmp_path / "home" / "downloads" / "spiga_wflw.pt") in err
    # and the mean face, with its own URL and place
    assert "mean_face_3D_98.txt (the official 3D mean face) is not in the cache" in err
    assert hub.MEAN_FACE_URL.replace("{file}", "mean_face_3D_98.txt") in err
    assert str(tmp_path / "home" / "models3D" / "mean_face_3D_98.txt") in err


# --------------------------------------------------------------------------- the mean faces, fetched


class FileServer:
    """Plain files of `folder` on 127.0.0.1 (standing for raw.githubusercontent.com);
    `status[file]` answers that status instead; `requests` logs the paths asked for."""

    def __init__(self, folder):
        self.folder, self.status, self.requests = folder, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                file = self.path.rsplit("/", 1)[-1]
                path = server.folder / file
                status = server.status.get(file, 200 if path.is_file() else 404)
                body = path.read_bytes() if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/andresprados/SPIGA/models3D/{{file}}"


@pytest.fixture
def github(tmp_path, monkeypatch):
    """The official mean faces served by a local server that `SPIGA_MEAN_FACE_URL` points at,
    and an empty cache; skipped without ../shared (the official files)."""
    upstream = UPSTREAM_MEAN_FACES
    if not upstream.is_dir():
        pytest.skip("needs ../shared/fixtures/upstream/models3D (the official mean faces), absent in this checkout")
    www = tmp_path / "github"
    www.mkdir()
    for official in OFFICIAL_MEAN_FACES.values():
        (www / official.file).write_bytes((upstream / official.file).read_bytes())
    server = FileServer(www)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    isolate(monkeypatch, tmp_path, "http://127.0.0.1:9", mean_faces=False)
    monkeypatch.setenv("SPIGA_MEAN_FACE_URL", server.url)
    yield server, tmp_path / "home" / "models3D"
    server.httpd.shutdown()
    server.httpd.server_close()


def test_the_mean_faces_are_downloaded_once_and_checked(github):
    server, cache = github
    for points, official in OFFICIAL_MEAN_FACES.items():
        path = official_mean_face(points)
        assert path == cache / official.file
        data = path.read_bytes()
        assert len(data) == official.size and hashlib.sha256(data).hexdigest() == official.sha256
        assert data == (server.folder / official.file).read_bytes()
        assert read_mean_face(path, WFLW_98 if points == 98 else IBUG_68).shape == (points, 3)
    assert server.requests == [f"/andresprados/SPIGA/models3D/{o.file}" for o in OFFICIAL_MEAN_FACES.values()]
    official_mean_face(98)  # the cache, no request
    assert len(server.requests) == 2


def test_a_mean_face_that_is_not_the_official_file_is_refused(github):
    server, cache = github
    file = OFFICIAL_MEAN_FACES[68].file
    (server.folder / file).write_bytes((server.folder / file).read_bytes().replace(b"1", b"2", 1))
    with pytest.raises(ModelNotFound) as error:
        official_mean_face(68)
    message = str(error.value)
    assert "\n" not in message and file in message and "not the official file" in message
    assert server.url.replace("{file}", file) in message and str(cache / file) in message
    assert not (cache / file).exists()


@pytest.mark.parametrize("status", [404, 500])
def test_a_mean_face_http_error_says_where_to_put_it(github, status):
    server, cache = github
    file = OFFICIAL_MEAN_FACES[98].file
    server.status[file] = status
    with pytest.raises(ModelNotFound) as error:
        official_mean_face(98)
    message = str(error.value)
    assert "\n" not in message and f"HTTP {status}" in message and str(cache / file) in message
    assert not (cache / file).exists()


def test_mean_faces_offline_and_unreachable(github, monkeypatch, tmp_path):
    server, cache = github
    monkeypatch.setenv("SPIGA_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="mean_face_3D_98.txt .*SPIGA_OFFLINE"):
        official_mean_face(98)
    assert server.requests == []
    # a file: mirror is local, so it is read offline
    monkeypatch.setenv("SPIGA_MEAN_FACE_URL", (server.folder).as_uri() + "/{file}")
    assert official_mean_face(98).read_bytes() == (server.folder / "mean_face_3D_98.txt").read_bytes()
    monkeypatch.delenv("SPIGA_OFFLINE")
    monkeypatch.setenv("SPIGA_MEAN_FACE_URL", "http://127.0.0.1:9/{file}")  # nothing listens on port 9
    with pytest.raises(ModelNotFound, match="mean_face_3D_68.txt: cannot download http://127.0.0.1:9/"):
        official_mean_face(68)
    with pytest.raises(ModelNotFound, match="no official mean face has 5 points"):
        official_mean_face(5)


def test_convert_fetches_the_official_mean_face_by_default(github, tmp_path):
    """`spiga convert OFFICIAL.pt --config wflw --out M` without --mean-face: the official one."""
    from spiga.checkpoint import load_checkpoint
    from spiga.cli import main

    model, _ = random_model("official", WFLW_98, seed=0)
    weights = tmp_path / "spiga_wflw.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "wflw.safetensors"
    assert main(["convert", str(weights), "--config", "wflw", "--out", str(out)]) == 0
    loaded = load_checkpoint(out).model.mean_face_3d.numpy()
    assert np.allclose(loaded, read_mean_face(github[1] / "mean_face_3D_98.txt", WFLW_98))


def test_convert_reads_the_weights_before_fetching_the_mean_face(tmp_path, monkeypatch, capsys):
    """A bad weights file is named as such, offline and without a mean face in the cache."""
    from spiga.cli import main

    isolate(monkeypatch, tmp_path, "http://127.0.0.1:9", mean_faces=False)
    monkeypatch.setenv("SPIGA_OFFLINE", "1")
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights\n")
    assert main(["convert", str(notes), "--config", "300wprivate", "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "notes.txt" in err and "mean_face" not in err
    # sound weights: the mean face is what is missing, and the message says where to put it
    model, _ = random_model("tiny", IBUG_68, seed=0)
    torch.save(model.state_dict(), tmp_path / "spiga_300wprivate.pt")
    assert main(["convert", str(tmp_path / "spiga_300wprivate.pt"), "--config", "300wprivate", "--out",
                 str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "mean_face_3D_68.txt" in err and str(tmp_path / "home" / "models3D" / "mean_face_3D_68.txt") in err


def test_training_from_scratch_takes_the_official_mean_face(github, monkeypatch):
    """98 or 68 built-in points with neither --mean-face nor --init: the official mean face,
    fetched like a named model's; offline without it, one line saying where to put it."""
    from spiga.train import TrainConfig
    from spiga.train.loop import _resolve_mean_face

    server, cache = github
    face, source = _resolve_mean_face(TrainConfig(), IBUG_68, None, datasets=[])
    assert source == "mean_face_3D_68.txt" and np.allclose(face, read_mean_face(cache / source, IBUG_68))
    monkeypatch.setenv("SPIGA_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=r"mean_face_3D_98.txt .*SPIGA_OFFLINE.*models3D/mean_face_3D_98.txt"):
        _resolve_mean_face(TrainConfig(), WFLW_98, None, datasets=[])


# --------------------------------------------------------------------------- many processes


CHILD = """
import sys, time
from pathlib import Path
from spiga import hub
hub.OFFICIAL_MODELS["tinytest"] = hub.OfficialModel("wflw", "spiga_tiny.pt", model_size="tiny")
print("ready", flush=True)
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
print(hub.resolve_model("tinytest", progress=False), flush=True)
"""


def test_many_processes_fetch_and_convert_once(tmp_path, server):
    """Three processes ask for the same model at the same moment (torchrun ranks): one
    downloads (the Hub client's lock) and converts (ours), the others wait and reuse."""
    register_tiny(server.folder)
    env = {**os.environ, "SPIGA_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": server.url, "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    for name in ("SPIGA_OFFLINE", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", "SPIGA_HUB_REVISION"):
        env.pop(name, None)
    place_mean_faces(tmp_path / "home")
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(go)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        go.touch()  # all at once
        results = [child.communicate(timeout=300) for child in children]
    finally:
        for child in children:
            child.kill() if child.poll() is None else None
    assert [child.returncode for child in children] == [0, 0, 0], [err[-2000:] for _, err in results]
    paths = {out.strip() for out, _ in results}
    assert paths == {str(tmp_path / "home" / "models" / "spiga_tinytest.safetensors")}
    assert len(server.gets("spiga_tiny.pt")) == 1, server.requests
    from spiga.checkpoint import load_checkpoint

    assert load_checkpoint(paths.pop()).config == ModelConfig.sized("tiny", 98, 15)


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("", False), ("no", False)])
def test_offline_values(monkeypatch, value, expected):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("SPIGA_OFFLINE", value)
    assert hub.offline() is expected
