"""SIGTERM during `spiga train`: a resumable state is saved, the process exits cleanly,
and `--resume` continues from it. Runs the real command on a tiny synthetic dataset."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from spiga.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
MARKER = "SIGTERM or Ctrl-C saves a resumable state"  # logged once the handler is installed


def _spiga(*args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "spiga", "-v", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lines(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _train_args(data: dict[str, Path], out: Path) -> list[str]:
    return ["train", "--train", f"custom:{data['annotations']}", "--landmark-set", str(data["landmark_set"]),
            "--mean-face", str(data["mean_face"]), "--model-size", "tiny", "--batch-size", "2", "--epochs", "500",
            "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)]


def test_sigterm_saves_a_resumable_state_and_resume_continues(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", count=4, seed=3)
    out = tmp_path / "run"
    process = _spiga(*_train_args(data, out), cwd=tmp_path)
    lines = _lines(process.stderr)
    seen: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while not any(MARKER in line for line in seen):
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                pytest.fail("spiga train ended before training started:\n" + "".join(seen))
            seen.append(line)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    log = "".join(seen)
    assert process.returncode == 0, log
    assert "resume with: spiga train --resume" in log or "trained" in stdout
    state = torch.load(out / "last.resume.pt", map_location="cpu", weights_only=True)
    assert state["step"] >= 1
    assert (out / "last.safetensors").is_file()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files

    target = state["step"] + 2
    resumed = _spiga("train", "--resume", str(out), "--max-steps", str(target), cwd=tmp_path)
    stdout, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, stderr
    assert f"trained {target} steps" in stdout
    after = torch.load(out / "last.resume.pt", map_location="cpu", weights_only=True)
    assert after["step"] == target
