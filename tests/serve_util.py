"""Helpers of the server tests: a real uvicorn server on a free loopback port, test images."""

from __future__ import annotations

import socket
import struct
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


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that declares width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


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
