"""Named models: download (from a local HTTP server), verification, cache, offline errors."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pytest
import torch

from spiga import hub
from spiga.checkpoint import build_model
from spiga.errors import ModelNotFound
from spiga.landmarks import WFLW_98
from spiga.model import ModelConfig


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def file_server(tmp_path):
    """Serves tmp_path/'www' on 127.0.0.1; yields (folder, base URL, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def tiny_official(tmp_path, monkeypatch, file_server):
    """A tiny 'official' model served over HTTP, registered under the name `tinytest`."""
    www, base, requests = file_server
    torch.manual_seed(0)
    model = build_model(ModelConfig.sized("tiny", 98, 15), WFLW_98)
    torch.save(model.state_dict(), www / "spiga_tiny.pt")
    rng = np.random.default_rng(0)
    text = "".join(f"{i}|{x:.6f}|{y:.6f}|{z:.6f}\n" for i, (x, y, z) in zip(WFLW_98.ids, rng.normal(size=(98, 3))))
    (www / "mean_face_tiny.txt").write_text(text)
    monkeypatch.setitem(hub.OFFICIAL_MODELS, "tinytest",
                        hub.OfficialModel("wflw", "spiga_tiny.pt", "mean_face_tiny.txt", model_size="tiny"))
    monkeypatch.setitem(hub.MEAN_FACE_SHA256, "mean_face_tiny.txt", hashlib.sha256(text.encode()).hexdigest())
    monkeypatch.setenv("SPIGA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPIGA_WEIGHTS_URL", base + "/{file}")
    monkeypatch.setenv("SPIGA_MEAN_FACE_URL", base + "/{file}")
    return www, requests, tmp_path / "home"


def test_official_url_templates():
    assert hub.WEIGHTS_URL.format(file="spiga_wflw.pt") == \
        "https://huggingface.co/aprados/spiga/resolve/main/spiga_wflw.pt?download=true"
    assert "656f90a76a6800e6091bbce519550e86e04cf17f/spiga/data/models3D/" in hub.MEAN_FACE_URL
    assert hub.OFFICIAL_MODELS["cofw68"].weights_file == "spiga_300wprivate.pt"


def test_download_convert_and_cache(tiny_official):
    www, requests, home = tiny_official
    path = hub.resolve_model("tinytest", progress=False)
    assert path == home / "models" / "spiga_tinytest.safetensors"
    assert sorted(requests) == ["/mean_face_tiny.txt", "/spiga_tiny.pt"]
    import spiga

    aligner = spiga.load("tinytest", device="cpu")
    faces = aligner.align(np.zeros((64, 64, 3), np.uint8), boxes=[(10, 10, 40, 40)])
    assert faces[0].landmarks.shape == (98, 2)
    # second use: from the cache, no request
    assert hub.resolve_model("tinytest", progress=False) == path
    assert len(requests) == 2
    # no temporary files are left behind
    assert not [p for p in home.rglob("*") if p.name.endswith((".part", ".tmp"))]


def test_bad_mean_face_checksum_leaves_nothing(tiny_official, monkeypatch):
    www, requests, home = tiny_official
    monkeypatch.setitem(hub.MEAN_FACE_SHA256, "mean_face_tiny.txt", "0" * 64)
    with pytest.raises(Exception, match="sha256"):
        hub.resolve_model("tinytest", progress=False)
    assert not (home / "models3D" / "mean_face_tiny.txt").exists()
    assert not list((home / "models3D").glob("*"))


def test_offline_error_says_where_to_put_the_file(tiny_official, monkeypatch):
    www, requests, home = tiny_official
    monkeypatch.setenv("SPIGA_WEIGHTS_URL", "http://127.0.0.1:9/{file}")  # nothing listens on port 9
    with pytest.raises(ModelNotFound) as error:
        hub.resolve_model("tinytest", progress=False)
    message = str(error.value)
    assert "cannot download http://127.0.0.1:9/spiga_tiny.pt" in message
    assert str(home / "downloads" / "spiga_tiny.pt") in message


def test_manually_placed_file_is_used(tiny_official, monkeypatch):
    www, requests, home = tiny_official
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / "spiga_tiny.pt").write_bytes((www / "spiga_tiny.pt").read_bytes())
    hub.resolve_model("tinytest", progress=False)
    assert requests == ["/mean_face_tiny.txt"]


def test_interrupted_download_leaves_no_partial_file(tiny_official):
    www, requests, home = tiny_official
    (www / "spiga_tiny.pt").write_bytes(b"")  # the server now sends an empty, unloadable file
    with pytest.raises(ModelNotFound, match="Delete"):
        hub.resolve_model("tinytest", progress=False)
    assert not (home / "models" / "spiga_tinytest.safetensors").exists()


def test_unknown_names():
    with pytest.raises(ModelNotFound, match="unknown model 'nope'.*wflw"):
        hub.resolve_model("nope")
    with pytest.raises(ModelNotFound, match="no such checkpoint file"):
        hub.resolve_model("missing/model.safetensors")
