"""`spiga info`: what a bug report needs, as text and as JSON, with no network and no secrets."""

from __future__ import annotations

import json

from spiga.about import __version__
from spiga.cli import main


def test_info_json_reports_versions_devices_caches_and_settings(tmp_path, monkeypatch, capsys, tiny_checkpoint):
    monkeypatch.setenv("SPIGA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # reported; never asked
    monkeypatch.setenv("SPIGA_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    (models / "spiga_wflw.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    (tmp_path / "home" / "models3D").mkdir()
    (tmp_path / "home" / "models3D" / "mean_face_3D_68.txt").write_text("1|0|0|0\n")

    assert main(["info", "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out)
    assert "hf_secret_value" not in out and info["settings"]["HF_TOKEN"] == "set"
    versions = info["versions"]
    assert versions["spiga"] == __version__ and {"python", "platform", "torch", "numpy", "onnxruntime",
                                                 "opencv (cv2)"} <= set(versions)
    assert isinstance(info["devices"]["cuda_available"], bool) and info["devices"]["cpu"]
    caches = info["caches"]
    assert caches["spiga_home"] == str(tmp_path / "home") and caches["hub_cache"] == str(tmp_path / "hf" / "hub")
    assert caches["models"] == ["spiga_wflw.safetensors"] and caches["named_models_ready"] == ["wflw"]
    assert caches["mean_faces"] == ["mean_face_3D_68.txt"]
    settings = info["settings"]
    assert settings["offline"] is True and settings["hub_endpoint"] == "http://127.0.0.1:9"
    assert settings["SPIGA_HOME"] == str(tmp_path / "home") and settings["hub_revision"]


def test_info_text_has_one_section_per_topic(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for section in ("versions:", "devices:", "caches:", "settings:"):
        assert f"\n{section}\n" in f"\n{out}"
    assert __version__ in out
