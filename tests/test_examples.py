"""The scripts in examples/ run as a user runs them (a fresh process, outside the
repository), on small random-weight models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                                         "HOME": str(cwd)})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_align_photo(tiny_checkpoint, image_file, tmp_path):
    result = run("align_photo.py", str(image_file), "--model", str(tiny_checkpoint), "--box", "70", "35", "100",
                 "130", "--out", "drawn.png", cwd=tmp_path)
    assert "face 0:" in result.stdout and "98 landmarks" in result.stdout
    drawn = cv2.imread(str(tmp_path / "drawn.png"))
    assert drawn is not None and (drawn != cv2.imread(str(image_file))).any()


def test_folder_to_jsonl(tiny_checkpoint, face_image, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), face_image)
    cv2.imwrite(str(folder / "b.jpg"), face_image)
    (folder / "broken.png").write_bytes(b"not an image")
    run("folder_to_jsonl.py", str(folder), "faces.jsonl", "--model", str(tiny_checkpoint), cwd=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "faces.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in records] == ["a.png", "b.jpg", "broken.png"]
    assert "faces" in records[0] and "error" in records[2]


def test_video_tracking(tiny_checkpoint, face_image, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (240, 200))
    for i in range(5):
        writer.write(np.roll(face_image, 2 * i, axis=1))
    writer.release()
    result = run("video_tracking.py", str(video), "--model", str(tiny_checkpoint), "--out", "out.mp4", "--jsonl",
                 "frames.jsonl", cwd=tmp_path)
    assert result.stdout.startswith("5 frames")
    assert len((tmp_path / "frames.jsonl").read_text().splitlines()) == 5
    assert (tmp_path / "out.mp4").is_file()


def test_finetune_cascade(tmp_path):
    """Fine-tuning on an annotated folder moves the cascade only (the CNN and pose stay bit-identical)."""
    import torch

    from spiga.data.synthetic import write_synthetic_dataset
    from spiga.landmarks import read_landmark_set, read_mean_face
    from spiga.testing import random_checkpoint

    data = write_synthetic_dataset(tmp_path / "thermal", 16, seed=5, domain="thermal")
    landmarks = read_landmark_set(data["landmark_set"])
    init = random_checkpoint(tmp_path / "pretrained.safetensors", "tiny", landmarks, seed=0,
                             mean_face_3d=read_mean_face(data["mean_face"], landmarks))
    run("finetune_cascade.py", "--init", str(init), "--train", str(data["annotations"]), "--landmark-set",
        str(data["landmark_set"]), "--out", "run", "--steps", "3", "--batch-size", "4", "--lr", "1e-3",
        "--device", "cpu", "--workers", "0", cwd=tmp_path)
    before, after = load_file(str(init)), load_file(str(tmp_path / "run" / "last.safetensors"))
    frozen = [k for k in before if k.startswith(("visual_cnn.", "pose_fc."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("gcn."))


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_tested(script):
    assert f'"{script}"' in Path(__file__).read_text()
