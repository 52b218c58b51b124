"""Named models: download (from a local HTTP server), verification, cache, offline errors."""

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
from spiga.checkpoint import build_model
from spiga.errors import ModelNotFound
from spiga.landmarks import WFLW_98
from spiga.model import ModelConfig


class FileServer:
    """A static file server on 127.0.0.1 that can misbehave on purpose, per path.

    `behaviour[path]` is a list of what the next requests of `path` get, one entry per
    request (then normal service): "drop" (half the file, then the connection closes),
    "drop-no-length" (the same without Content-Length), "no-length", "slow", an HTTP
    status such as 404, or ("redirect", size) (302 to /cdn/<path> with X-Linked-Size).
    Range requests (`bytes=N-`) get 206. `requests` logs (path, Range header or None).
    """

    def __init__(self, folder):
        self.folder = folder
        self.behaviour: dict[str, list] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # close-delimited bodies are allowed

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                queue = server.behaviour.get(path) or []
                mode = queue.pop(0) if queue else "normal"
                if isinstance(mode, int):
                    self.send_error(mode)
                    return
                if isinstance(mode, tuple):
                    self.send_response(302)
                    self.send_header("Location", "/cdn" + path)
                    self.send_header("X-Linked-Size", str(mode[1]))
                    self.end_headers()
                    return
                file = server.folder / path.removeprefix("/cdn").lstrip("/")
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if mode not in ("no-length", "drop-no-length"):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode in ("drop", "drop-no-length"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                step = max(1, len(body) // 8) if mode == "slow" else len(body) or 1
                for offset in range(0, len(body), step):
                    self.wfile.write(body[offset:offset + step])
                    if mode == "slow":
                        time.sleep(0.1)  # holds the download (and its lock) open while others ask

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p in (path, "/cdn" + path))


@pytest.fixture
def server(tmp_path, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    monkeypatch.setattr(hub, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    file_server = FileServer(www)
    file_server.thread.start()
    yield file_server
    file_server.httpd.shutdown()
    file_server.httpd.server_close()


def register_tiny(www):
    """Serve a tiny 'official' model from `www`; returns (OfficialModel, mean-face sha256)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.sized("tiny", 98, 15), WFLW_98)
    torch.save(model.state_dict(), www / "spiga_tiny.pt")
    rng = np.random.default_rng(0)
    text = "".join(f"{i}|{x:.6f}|{y:.6f}|{z:.6f}\n" for i, (x, y, z) in zip(WFLW_98.ids, rng.normal(size=(98, 3))))
    (www / "mean_face_tiny.txt").write_text(text)
    return (hub.OfficialModel("wflw", "spiga_tiny.pt", "mean_face_tiny.txt", model_size="tiny"),
            hashlib.sha256(text.encode()).hexdigest())


@pytest.fixture
def tiny_official(tmp_path, monkeypatch, server):
    """A tiny 'official' model served over HTTP, registered under the name `tinytest`."""
    official, sha256 = register_tiny(server.folder)
    monkeypatch.setitem(hub.OFFICIAL_MODELS, "tinytest", official)
    monkeypatch.setitem(hub.MEAN_FACE_SHA256, "mean_face_tiny.txt", sha256)
    monkeypatch.setenv("SPIGA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPIGA_WEIGHTS_URL", server.url + "/{file}")
    monkeypatch.setenv("SPIGA_MEAN_FACE_URL", server.url + "/{file}")
    for name in ("SPIGA_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return server.folder, server, tmp_path / "home"


def test_official_url_templates():
    assert hub.WEIGHTS_URL.format(file="spiga_wflw.pt") == \
        "https://huggingface.co/aprados/spiga/resolve/main/spiga_wflw.pt?download=true"
    assert "656f90a76a6800e6091bbce519550e86e04cf17f/spiga/data/models3D/" in hub.MEAN_FACE_URL
    assert hub.OFFICIAL_MODELS["cofw68"].weights_file == "spiga_300wprivate.pt"


def test_download_convert_and_cache(tiny_official):
    www, server, home = tiny_official
    path = hub.resolve_model("tinytest", progress=False)
    assert path == home / "models" / "spiga_tinytest.safetensors"
    assert sorted(server.requests) == [("/mean_face_tiny.txt", None), ("/spiga_tiny.pt", None)]
    import spiga

    aligner = spiga.load("tinytest", device="cpu")
    faces = aligner.align(np.zeros((64, 64, 3), np.uint8), boxes=[(10, 10, 40, 40)])
    assert faces[0].landmarks.shape == (98, 2)
    # second use: from the cache, no request
    assert hub.resolve_model("tinytest", progress=False) == path
    assert len(server.requests) == 2
    # no temporary files are left behind
    assert not [p for p in home.rglob("*") if p.name.endswith((".part", ".tmp"))]


def test_bad_mean_face_checksum_leaves_nothing(tiny_official, monkeypatch):
    www, server, home = tiny_official
    monkeypatch.setitem(hub.MEAN_FACE_SHA256, "mean_face_tiny.txt", "0" * 64)
    with pytest.raises(Exception, match="sha256"):
        hub.resolve_model("tinytest", progress=False)
    assert not (home / "models3D" / "mean_face_tiny.txt").exists()
    assert not list((home / "models3D").glob("*"))


def test_offline_error_says_where_to_put_the_file(tiny_official, monkeypatch):
    www, server, home = tiny_official
    monkeypatch.setenv("SPIGA_WEIGHTS_URL", "http://127.0.0.1:9/{file}")  # nothing listens on port 9
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "cannot download http://127.0.0.1:9/spiga_tiny.pt" in message
    assert str(home / "downloads" / "spiga_tiny.pt") in message


def test_manually_placed_file_is_used(tiny_official, monkeypatch):
    www, server, home = tiny_official
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / "spiga_tiny.pt").write_bytes((www / "spiga_tiny.pt").read_bytes())
    hub.resolve_model("tinytest", progress=False)
    assert server.requests == [("/mean_face_tiny.txt", None)]


def test_interrupted_download_leaves_no_partial_file(tiny_official):
    www, server, home = tiny_official
    (www / "spiga_tiny.pt").write_bytes(b"")  # the server now sends an empty, unloadable file
    with pytest.raises(ModelNotFound, match="Delete"):
        hub.resolve_model("tinytest", progress=False)
    assert not (home / "models" / "spiga_tinytest.safetensors").exists()


def test_unknown_names():
    with pytest.raises(ModelNotFound, match="unknown model 'nope'.*wflw"):
        hub.resolve_model("nope")
    with pytest.raises(ModelNotFound, match="no such checkpoint file"):
        hub.resolve_model("missing/model.safetensors")


# --------------------------------------------------------------------------- many processes


CHILD = """
import sys, time
from pathlib import Path
from spiga import hub
hub.OFFICIAL_MODELS["tinytest"] = hub.OfficialModel("wflw", "spiga_tiny.pt", "mean_face_tiny.txt", model_size="tiny")
hub.MEAN_FACE_SHA256["mean_face_tiny.txt"] = sys.argv[2]
print("ready", flush=True)
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
print(hub.resolve_model("tinytest", progress=False), flush=True)
"""


def test_many_processes_fetch_and_convert_once(tmp_path, server):
    """Three processes ask for the same model at the same moment (torchrun ranks): one
    downloads and converts, the others wait for the lock and reuse its files."""
    official, sha256 = register_tiny(server.folder)
    server.behaviour["/spiga_tiny.pt"] = ["slow"]
    env = {**os.environ, "SPIGA_HOME": str(tmp_path / "home"), "SPIGA_WEIGHTS_URL": server.url + "/{file}",
           "SPIGA_MEAN_FACE_URL": server.url + "/{file}", "OMP_NUM_THREADS": "1"}
    env.pop("SPIGA_OFFLINE", None)
    env.pop("HF_HUB_OFFLINE", None)
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(go), sha256], stdout=subprocess.PIPE,
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
    assert server.gets("/spiga_tiny.pt") == 1 and server.gets("/mean_face_tiny.txt") == 1, server.requests
    from spiga.checkpoint import load_checkpoint

    assert load_checkpoint(paths.pop()).config == ModelConfig.sized("tiny", 98, 15)


# --------------------------------------------------------------------------- HTTP errors, broken transfers


@pytest.mark.parametrize("status, reason", [(404, "Not Found"), (403, "Forbidden")])
def test_http_errors_are_named_not_offline(tiny_official, status, reason):
    www, server, home = tiny_official
    server.behaviour["/spiga_tiny.pt"] = [status]
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert f"HTTP {status} {reason} for {server.url}/spiga_tiny.pt" in message
    assert "Offline" not in message and str(home / "downloads" / "spiga_tiny.pt") in message
    assert server.gets("/spiga_tiny.pt") == 1  # not retried: another attempt would get the same answer


def test_server_errors_are_retried(tiny_official):
    www, server, home = tiny_official
    server.behaviour["/spiga_tiny.pt"] = [503, 500]
    hub.resolve_model("tinytest", progress=False)
    assert server.gets("/spiga_tiny.pt") == 3


def test_broken_transfer_resumes_with_a_range_request(tiny_official):
    www, server, home = tiny_official
    server.behaviour["/spiga_tiny.pt"] = ["drop", "drop"]
    hub.resolve_model("tinytest", progress=False)
    ranges = [r for p, r in server.requests if p == "/spiga_tiny.pt"]
    size = (www / "spiga_tiny.pt").stat().st_size
    assert ranges[0] is None and ranges[1] == f"bytes={size // 2}-" and len(ranges) == 3
    assert (home / "downloads" / "spiga_tiny.pt").read_bytes() == (www / "spiga_tiny.pt").read_bytes()


def test_size_is_checked_without_content_length_when_known(tiny_official, monkeypatch):
    """A server that sends no Content-Length and closes early looks like a complete
    transfer; the known size of the mean face shows it is not, and the rest is fetched."""
    www, server, home = tiny_official
    size = (www / "mean_face_tiny.txt").stat().st_size
    monkeypatch.setitem(hub.MEAN_FACE_SIZE, "mean_face_tiny.txt", size)
    server.behaviour["/mean_face_tiny.txt"] = ["drop-no-length"]
    path = hub.fetch_mean_face("mean_face_tiny.txt", progress=False)
    assert path.read_bytes() == (www / "mean_face_tiny.txt").read_bytes()
    assert [r for _, r in server.requests] == [None, f"bytes={size // 2}-"]
    # a server that always stops early: refused after the retries, saying how far it got
    path.unlink()
    server.behaviour["/mean_face_tiny.txt"] = ["drop-no-length"] * 10
    server.requests.clear()
    with pytest.raises(ModelNotFound, match=rf"connection closed after \d+ of {size} bytes; 4 attempts"):
        hub.fetch_mean_face("mean_face_tiny.txt", progress=False)
    assert not list((home / "models3D").iterdir())


def test_hugging_face_linked_size_checks_a_transfer_without_content_length(tiny_official):
    www, server, home = tiny_official
    size = (www / "spiga_tiny.pt").stat().st_size
    server.behaviour["/spiga_tiny.pt"] = [("redirect", size), ("redirect", size)]
    server.behaviour["/cdn/spiga_tiny.pt"] = ["drop-no-length"]
    hub.resolve_model("tinytest", progress=False)
    assert [r for p, r in server.requests if p.endswith("spiga_tiny.pt")] == [None, None, f"bytes={size // 2}-",
                                                                              f"bytes={size // 2}-"]
    # a server that offers another size than the redirect announced is refused at once
    (home / "downloads" / "spiga_tiny.pt").unlink()
    server.behaviour["/spiga_tiny.pt"] = [("redirect", size + 1)]
    with pytest.raises(ModelNotFound, match=rf"the server offers {size} bytes, expected {size + 1}"):
        hub.fetch_official_weights("spiga_tiny.pt", progress=False)


def test_a_leftover_part_file_is_not_trusted(tiny_official):
    www, server, home = tiny_official
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / ".spiga_tiny.pt.part").write_bytes(b"from a process killed long ago")
    hub.fetch_official_weights("spiga_tiny.pt", progress=False)
    assert (home / "downloads" / "spiga_tiny.pt").read_bytes() == (www / "spiga_tiny.pt").read_bytes()
    assert [name.name for name in (home / "downloads").iterdir()] == ["spiga_tiny.pt"]


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize("variable", ["SPIGA_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_switch_never_touches_the_network(tiny_official, monkeypatch, variable):
    www, server, home = tiny_official
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "spiga_tiny.pt is not in the cache" in message and "SPIGA_OFFLINE" in message
    assert f"{server.url}/spiga_tiny.pt" in message and str(home / "downloads" / "spiga_tiny.pt") in message
    assert server.requests == []
    # with the files put where the message says, the model is converted offline
    (home / "downloads").mkdir(parents=True, exist_ok=True)
    (home / "models3D").mkdir(parents=True, exist_ok=True)
    (home / "downloads" / "spiga_tiny.pt").write_bytes((www / "spiga_tiny.pt").read_bytes())
    (home / "models3D" / "mean_face_tiny.txt").write_bytes((www / "mean_face_tiny.txt").read_bytes())
    assert hub.resolve_model("tinytest", progress=False).is_file()
    assert server.requests == []


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("", False), ("no", False)])
def test_offline_values(monkeypatch, value, expected):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("SPIGA_OFFLINE", value)
    assert hub.offline() is expected
