"""The webcam stream (WebSocket /v1/stream) with a real uvicorn server and the tiny model.

Frames of a synthetic face that BlazeFace finds, moving a little from frame to frame.
The stream must give what `spiga.video.Tracker` (tracking and One Euro smoothing) gives
on the same frames and times, since it reuses it with the model run by the batcher.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
ws_client = pytest.importorskip("websockets.sync.client", reason="the serve extra (websockets) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is needed to call the server")
from websockets.exceptions import ConnectionClosed  # noqa: E402

import spiga  # noqa: E402
from spiga.io import read_image_bytes  # noqa: E402
from spiga.serve import ServeSettings, create_app  # noqa: E402
from spiga.serve.stream import FRAME_HEADER  # noqa: E402
from spiga.video import Tracker  # noqa: E402

from serve_util import LiveServer, encode, moving_face_frames  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FPS = 15.0


@pytest.fixture(scope="module")
def aligner(tiny_checkpoint):
    return spiga.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def server(aligner):
    with LiveServer(create_app(aligner, ServeSettings(model_id="tiny", max_wait_ms=0, max_streams=2))) as live:
        yield live


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return [encode(frame) for frame in moving_face_frames(20)]


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/stream"


def frame_message(index: int, image: bytes) -> bytes:
    return FRAME_HEADER.pack(index * 1000.0 / FPS) + image


def start(ws, **fields) -> dict:
    ws.send(json.dumps({"type": "start", **fields}))
    return json.loads(ws.recv(timeout=60))


def closed_code(ws) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=60)
    return closed.value.rcvd.code


def test_stream_tracks_and_smooths_as_the_video_module(server, aligner, frames):
    with ws_client.connect(ws_url(server)) as ws:
        ready = start(ws)
        assert ready["type"] == "ready" and ready["model"] == "tiny" and ready["landmarks"] == 98
        replies = []
        for i, image in enumerate(frames):
            ws.send(frame_message(i, image))
            replies.append(json.loads(ws.recv(timeout=60)))
        ws.send(json.dumps({"type": "stop"}))
        assert closed_code(ws) == 1000
    assert [r["type"] for r in replies] == ["faces"] * len(frames)
    assert [r["frame"] for r in replies] == list(range(len(frames)))
    assert {face["id"] for r in replies for face in r["faces"]} == {0}  # one face, one stable id
    assert replies[0]["detected"] and not all(r["detected"] for r in replies)  # tracked between detections
    tracker = Tracker(aligner)  # the library on the same frames and times
    for i, (image, reply) in enumerate(zip(frames, replies)):
        expected = tracker.step(read_image_bytes(image), i / FPS).faces
        assert len(reply["faces"]) == len(expected) == 1
        face = reply["faces"][0]
        assert (reply["width"], reply["height"]) == (480, 360)
        np.testing.assert_allclose(face["landmarks"], expected[0].landmarks, atol=1e-3)
        np.testing.assert_allclose(face["box"], expected[0].box, atol=1e-6)
        assert face["headpose"]["yaw"] == pytest.approx(expected[0].headpose.yaw, abs=1e-3)
        assert len(face["pose_axes"]) in (0, 4)


def test_bad_frames_are_answered_and_the_stream_goes_on(server, frames):
    with ws_client.connect(ws_url(server)) as ws:
        start(ws)
        ws.send(b"abc")
        short = json.loads(ws.recv(timeout=60))
        ws.send(FRAME_HEADER.pack(0.0) + b"not an image")
        garbage = json.loads(ws.recv(timeout=60))
        ws.send("hello")
        text = json.loads(ws.recv(timeout=60))
        ws.send(frame_message(1, frames[0]))
        good = json.loads(ws.recv(timeout=60))
    assert (short["type"], short["code"]) == ("error", "bad_request")
    assert (garbage["type"], garbage["code"]) == ("error", "not_an_image")
    assert (text["type"], text["code"]) == ("error", "bad_request")
    assert good["type"] == "faces" and len(good["faces"]) == 1


def test_a_busy_server_skips_frames_with_retry_after(server, frames):
    gate = server.server.config.app.state.spiga.pipeline.admission
    with ws_client.connect(ws_url(server)) as ws:
        start(ws)
        gate.decode_backlog += 60.0  # a minute of work queued: no frame can meet its deadline
        try:
            ws.send(frame_message(0, frames[0]))
            skipped = json.loads(ws.recv(timeout=60))
        finally:
            gate.decode_backlog -= 60.0
        ws.send(frame_message(1, frames[1]))
        after = json.loads(ws.recv(timeout=60))
    assert skipped["type"] == "skipped" and skipped["code"] == "overloaded" and skipped["retry_after"] >= 60
    assert after["type"] == "faces"


def test_stream_limits(server):
    with ws_client.connect(ws_url(server)) as first, ws_client.connect(ws_url(server)) as second:
        start(first), start(second)
        with ws_client.connect(ws_url(server)) as third:
            assert closed_code(third) == 1013  # max_streams=2
    with ws_client.connect(ws_url(server)) as ws:
        ws.send("not json")
        assert closed_code(ws) == 1008  # the first message must be the start message


def test_stream_needs_the_key(aligner):
    settings = ServeSettings(model_id="tiny", api_key="s3cret", max_wait_ms=0)
    with LiveServer(create_app(aligner, settings)) as live:
        with ws_client.connect(ws_url(live)) as ws:
            ws.send(json.dumps({"type": "start"}))
            assert closed_code(ws) == 1008
        with ws_client.connect(ws_url(live)) as ws:
            ws.send(json.dumps({"type": "start", "api_key": "nope"}))
            assert closed_code(ws) == 1008
        with ws_client.connect(ws_url(live)) as ws:
            assert start(ws, api_key="s3cret")["type"] == "ready"
        with ws_client.connect(ws_url(live), additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert start(ws)["type"] == "ready"


def test_idle_unauthenticated_sockets_do_not_keep_the_key_holder_out(aligner, frames):
    import contextlib

    # two authenticated streams may run; four sockets may wait for their start message
    settings = ServeSettings(model_id="tiny", api_key="s3cret", max_wait_ms=0, max_streams=2, max_pending_streams=4,
                             body_timeout=60)  # the start-message deadline: longer than this test
    with LiveServer(create_app(aligner, settings)) as live, contextlib.ExitStack() as idle:
        sockets = [idle.enter_context(ws_client.connect(ws_url(live))) for _ in range(6)]
        # the budget of 4 waiting sockets is full: each newcomer closes the oldest waiting one (1013)
        assert [closed_code(ws) for ws in sockets[:2]] == [1013, 1013]
        replies = []
        for form in ({"api_key": "s3cret"}, {}):
            headers = {} if form else {"Authorization": "Bearer s3cret"}
            with ws_client.connect(ws_url(live), additional_headers=headers) as ws:
                replies.append(start(ws, **form)["type"])
                ws.send(frame_message(0, frames[0]))
                replies.append(json.loads(ws.recv(timeout=60))["type"])
        assert closed_code(sockets[2]) == 1013  # gave way to the first (the second found room)
        health = httpx.get(live.url + "/healthz").json()
    assert replies == ["ready", "faces", "ready", "faces"]
    assert health["streams"] == 0  # waiting sockets never held a stream slot
