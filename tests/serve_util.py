"""Helpers of the server tests: a real uvicorn server on a free loopback port, test images."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import cv2
import numpy as np


class LiveServer:
    """Run an ASGI app with uvicorn in a background thread on 127.0.0.1 (a free port).

        with LiveServer(app) as server:
            httpx.get(server.url + "/healthz")
    """

    def __init__(self, app) -> None:
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.socket.close()


def encode(image_bgr: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image_bgr)
    assert ok
    return data.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that declares width x height pixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b""))
            + _png_chunk(b"IEND", b""))


def many_chunk_png(chunks: int = 850_000) -> bytes:
    """A valid 64x64 PNG with `chunks` empty private ancillary chunks between its header and
    its pixels (850,000: about 9.7 MiB): a header that takes seconds to walk, in Python,
    for Pillow (which reads every chunk before the image data)."""
    png = encode(np.full((64, 64, 3), 90, np.uint8))
    signature_and_header = 8 + 25  # the signature, then IHDR (length, type, 13 bytes, CRC)
    return png[:signature_and_header] + _png_chunk(b"sPaM", b"") * chunks + png[signature_and_header:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`spiga serve ARGS` as a separate process (its standard error kept), ready when
    /healthz answers; killed on exit.

        with ServeProcess(["--model", m, "--port", str(port), ...], port) as server:
            httpx.get(server.url + "/healthz")
        server.stderr  # everything it wrote
    """

    def __init__(self, args: list[str], port: int) -> None:
        self.args = args
        self.url = f"http://127.0.0.1:{port}"
        self.stderr = ""

    def __enter__(self) -> "ServeProcess":
        import httpx

        self.process = subprocess.Popen([sys.executable, "-m", "spiga", "serve", *self.args],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=dict(os.environ))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"spiga serve exited: {self.stderr}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("spiga serve did not start")

    def _read(self) -> None:
        for line in self.process.stdout:  # standard error, merged into it
            self.stderr += line

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait(30)
        self._reader.join(10)


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted label items): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def batch_histogram(text: str) -> dict[str, float]:
    """Cumulative counts of spiga_batch_faces by bucket bound (`le`), plus `count`."""
    values = parse_metrics(text)
    out = {dict(labels)["le"]: value for (name, labels), value in values.items() if name == "spiga_batch_faces_bucket"}
    out["count"] = values.get(("spiga_batch_faces_count", ()), 0.0)
    return out


def moving_face_frames(count: int = 30, width: int = 480, height: int = 360, seed: int = 1) -> list[np.ndarray]:
    """`count` BGR frames of a synthetic face (`spiga.data.synthetic.render_face`, one the
    BlazeFace detector finds) moving a few pixels from frame to frame on a plain background."""
    from spiga.data.synthetic import render_face

    size = min(width, height) - 40
    face = render_face(np.random.default_rng(seed), size).image
    frames = []
    for i in range(count):
        dx = int((width - size) / 2 + 8 * np.sin(i / 4))
        dy = int((height - size) / 2 + 5 * np.cos(i / 5))
        frame = np.full((height, width, 3), 90, np.uint8)
        frame[dy:dy + size, dx:dx + size] = face
        frames.append(frame)
    return frames


def write_y4m(path, frames: list[np.ndarray], fps: int = 15) -> None:
    """Write BGR frames (even width and height) as a YUV4MPEG2 (4:2:0) clip, the format of
    Chromium's `--use-file-for-fake-video-capture`."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())  # Y, then U, then V planes
