"""Named models through the Hugging Face Hub client, against a local server that answers as
the Hub does; the cache, hand-placed files, offline errors, the shipped mean faces. Never the
real network."""

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
from spiga.landmarks import OFFICIAL_MEAN_FACES, WFLW_98, official_mean_face, read_mean_face
from spiga.model import ModelConfig
from spiga.testing import random_model

from conftest import SHARED

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


def isolate(monkeypatch, tmp_path, endpoint: str) -> None:
    """Empty caches, the local endpoint, no token, online, fast retries."""
    monkeypatch.setenv("SPIGA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for name in ("SPIGA_OFFLINE", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", "SPIGA_HUB_REVISION"):
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

    isolate(monkeypatch, tmp_path, "https://huggingface.co")
    monkeypatch.setenv("SPIGA_OFFLINE", "1")
    assert main(["align", str(image_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("spiga: error: spiga_wflw.pt is not in the cache")
    assert "https://huggingface.co/aprados/spiga/resolve/main/spiga_wflw.pt" in err
    assert "hf download aprados/spiga spiga_wflw.pt" in err and "the only file" in err
    assert str(tmp_path / "home" / "downloads" / "spiga_wflw.pt") in err


# --------------------------------------------------------------------------- the mean faces ship


def test_the_official_mean_faces_are_package_files():
    expected = {98: "606fa1d178a9e41541b2a0f604953af66c7b79ad740665c8c72578e9a7567c53",
                68: "59ee862825ed5444f50265b535b9c2cd4af017dc45c10fe70c73d0786feaccf1"}
    for points, file in OFFICIAL_MEAN_FACES.items():
        path = official_mean_face(points)
        assert path.name == file and hashlib.sha256(path.read_bytes()).hexdigest() == expected[points]
        upstream = SHARED / "fixtures" / "upstream" / "models3D" / file
        if upstream.is_file():  # the original release's files, where the shared fixtures are present
            assert upstream.read_bytes() == path.read_bytes()
    for name in ("LICENSE-spiga.txt", "NOTICE"):
        assert (official_mean_face(98).parent / name).is_file()


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
