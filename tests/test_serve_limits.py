"""The bounded server: admission control, deadlines, the face cap, the body-read deadline,
the API key on /metrics and the schema, and `spiga serve`'s options.

Admission and the batcher are tested on their own with fake costs and a fake model; the
server-level tests run the tiny random model under uvicorn on 127.0.0.1 and make the
model slow or blocking where they need a busy server. Nothing asserts a duration: where
"at once" matters, the model is held until the answer has arrived, or no pass may have
run. The exception is the hardening issue's exact forms against `spiga serve` (its
deadlines are the contract), where /healthz is compared with its own idle latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is needed to call the server")

import spiga  # noqa: E402
from spiga.detection import Detection, Detector  # noqa: E402
from spiga.serve import CODES, ServeSettings, create_app  # noqa: E402
from spiga.serve.admission import Admission, Costs, ImageWork  # noqa: E402
from spiga.serve.batcher import Batcher  # noqa: E402
from spiga.serve.errors import ApiError  # noqa: E402
from spiga.inference.aligner import FaceBoxes, cap_faces  # noqa: E402

from serve_util import LiveServer, encode, parse_metrics  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACE_BOX = [70.0, 35.0, 100.0, 130.0]


# --------------------------------------------------------------------------- admission on its own


class FakeQueue:
    def __init__(self, queued: int = 0, running: int = 0) -> None:
        self.queued_faces = queued
        self.running_faces = running


def admission(queued=0, running=0, seconds_per_face=1.0, decode_threads=1, max_queue=100) -> Admission:
    costs = Costs(shape=[(1, seconds_per_face)], decode_per_mp=0.1, detect_per_mp=1.0)
    return Admission(costs, FakeQueue(queued, running), decode_threads, 1, max_queue, max_faces=16)


def test_admission_refuses_what_cannot_meet_its_deadline():
    gate = admission(queued=5, running=1)  # 6 s of model work ahead at 1 s per face
    with pytest.raises(ApiError) as refused:
        gate.admit([ImageWork(1.0, faces=1)], deadline=100.0 + 5.0, now=100.0)
    assert refused.value.code == "overloaded" and "deadline" in refused.value.message
    assert refused.value.headers["Retry-After"] == "6"  # the accepted work's drain time
    ticket = gate.admit([ImageWork(1.0, faces=1)], deadline=100.0 + 30.0, now=100.0)
    assert gate.expected_faces == 1 and gate.decode_backlog == pytest.approx(0.1)
    ticket.release()
    assert gate.expected_faces == 0 and gate.decode_backlog == 0


def test_an_idle_server_refuses_a_request_whose_own_work_exceeds_its_deadline():
    gate = admission()  # 1 s per face, 0.1 s per megapixel decoded, 1 s per megapixel searched
    with pytest.raises(ApiError) as never:  # 55 s of decoding and detection + 1 s for its face: never fits in 10 s
        gate.admit([ImageWork(50.0, faces=None)], deadline=10.0, now=0.0, budget=10.0)
    assert never.value.code == "too_much_work" and never.value.status == 413
    assert "56.0 s of work" in never.value.message and "10 s deadline" in never.value.message
    with pytest.raises(ApiError) as late:  # 3 s of work would fit in the 10 s budget, but only 2 s are left
        gate.admit([ImageWork(1.0, faces=2)], deadline=10.0, now=8.0, budget=10.0)
    assert late.value.code == "overloaded" and late.value.status == 503 and "Retry-After" in late.value.headers
    assert not gate.busy() and gate.refused == 2  # nothing was reserved for either
    ticket = gate.admit([ImageWork(1.0, faces=2)], deadline=10.0, now=0.0, budget=10.0)
    assert gate.busy()
    ticket.resize(0, 4.0)  # its header was read: a larger image than first costed
    assert gate.decode_backlog == pytest.approx(4.0)
    ticket.release()
    assert not gate.busy()


def test_queue_bound_counts_expected_faces_not_jobs():
    gate = admission(max_queue=4)
    first = gate.admit([ImageWork(0.1, faces=3)], deadline=1e9, now=0.0)
    with pytest.raises(ApiError) as full:
        gate.admit([ImageWork(0.1, faces=2)], deadline=1e9, now=0.0)  # 3 + 2 > 4, though only one job waits
    assert full.value.code == "overloaded" and "queue is full" in full.value.message
    gate.admit([ImageWork(0.1, faces=None)], deadline=1e9, now=0.0)  # a detection reserves one face
    assert gate.faces_waiting() == 4
    first.release()
    with pytest.raises(ApiError) as never:
        gate.admit([ImageWork(0.1, faces=5)], deadline=1e9, now=0.0)
    assert never.value.code == "bad_request"  # can never fit: not a retry-later


def test_a_running_decode_stays_counted_until_it_leaves_the_pool():
    gate = admission()
    ticket = gate.admit([ImageWork(2.0, faces=1), ImageWork(2.0, faces=1)], deadline=1e9, now=0.0)
    ticket.decode_queued(0)
    ticket.release()  # e.g. the request timed out while image 0 is still being decoded
    assert gate.decode_backlog == pytest.approx(0.2) and gate.expected_faces == 0
    ticket.decoded(0)
    assert gate.decode_backlog == 0


class Entry:
    def __init__(self, deadline: float, decode_seconds: float, faces: int = 1) -> None:
        self.deadline, self.decode_seconds, self.faces = deadline, decode_seconds, faces


def test_admitted_requests_become_overdue_when_costs_rise():
    gate = admission(seconds_per_face=0.1)
    waiting = [Entry(10.0, 1.0), Entry(10.0, 1.0), Entry(10.0, 1.0)]
    gate.decode_backlog, gate.expected_faces = 3.0, 3  # their reservations
    assert gate.overdue(waiting, now=0.0) == []  # 1 + 1 + 1 s of decoding fits in 10 s
    for entry in waiting:  # the CPU got slower: as measured, each decode now takes 5 s
        entry.decode_seconds = 5.0
    gate.decode_backlog = 15.0
    late = gate.overdue(waiting, now=0.0)
    assert late == waiting[2:]  # 10 s for the second: on its deadline; 15 s for the third: 50 % beyond it
    alone = Entry(1.0, 4.5)
    gate.decode_backlog, gate.expected_faces = 4.5, 1
    assert gate.overdue([alone], now=0.0) == []  # nothing ahead of it: never overdue, as in admit


def test_costs_follow_a_rise_faster_than_a_fall():
    costs = Costs(seconds_per_face=1.0)
    costs.observe_pass(1, 3.0)
    risen = costs.seconds_per_face
    costs.observe_pass(1, 1.0)
    assert risen - 1.0 > risen - costs.seconds_per_face > 0  # a third of the way up, a tenth down
    costs.observe_pass(2, float("nan"))
    assert np.isfinite(costs.seconds_per_face)


def test_settings_take_the_cli_names_and_the_old_ones_with_a_warning():
    settings = ServeSettings(model_threads=2, decode_threads=3)
    assert (settings.model_threads, settings.decode_threads) == (2, 3)
    with pytest.warns(DeprecationWarning, match="model_threads"):
        old = ServeSettings(workers=2)
    with pytest.warns(DeprecationWarning, match="decode_threads"):
        assert old.decode_workers == 1
    assert old.model_threads == 2
    with pytest.raises(TypeError, match="both"):
        ServeSettings(workers=2, model_threads=2)
    with pytest.raises(spiga.SpigaError, match="model_threads must be >= 1"):
        ServeSettings(model_threads=0)
    with pytest.warns(DeprecationWarning, match="model_threads"):
        assert Batcher(lambda crops: crops, workers=3).model_threads == 3


def test_cap_detections_keeps_the_best_scores_in_order():
    boxes = np.arange(20, dtype=np.float64).reshape(5, 4)
    kept = cap_faces(FaceBoxes(boxes, [0.5, 0.9, 0.1, 0.8, 0.7]), 3)
    assert kept.dropped == 2 and kept.scores == [0.9, 0.8, 0.7]
    np.testing.assert_array_equal(kept.boxes, boxes[[1, 3, 4]])
    assert cap_faces(FaceBoxes(boxes, [0.1] * 5), 5).dropped == 0


# --------------------------------------------------------------------------- the batcher's bounds


def _predict(crops):
    return np.zeros((len(crops), 1, 2)), np.zeros((len(crops), 6))


def test_batcher_bounds_the_queue_even_when_empty():
    async def main():
        batcher = Batcher(_predict, max_batch=4, max_wait_ms=0, max_queue=3)
        with pytest.raises(ValueError):
            await batcher.submit(np.zeros((4, 2, 2, 3), np.uint8))  # could never fit
        landmarks, _ = await batcher.submit(np.zeros((3, 2, 2, 3), np.uint8))
        await batcher.stop()
        return landmarks

    assert asyncio.run(main()).shape == (3, 1, 2)


def test_batcher_answers_by_the_deadline_not_its_timeout():
    release = threading.Event()

    def blocked(crops):
        release.wait(10)
        return _predict(crops)

    async def main():
        batcher = Batcher(blocked, max_batch=1, max_wait_ms=0, max_queue=10, timeout=60)
        with pytest.raises(ApiError) as late:
            await batcher.submit(np.zeros((1, 2, 2, 3), np.uint8), deadline=time.monotonic() + 0.2)
        answered_while_blocked = not release.is_set()
        release.set()
        await batcher.stop()
        return late.value, answered_while_blocked

    late, answered_while_blocked = asyncio.run(main())
    assert late.code == "timeout" and int(late.headers["Retry-After"]) >= 1
    assert answered_while_blocked


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint


def _aligner(checkpoint, detector="blazeface"):
    return spiga.load(checkpoint, device="cpu", detector=detector)


def _post(url: str, data: bytes, boxes=None, headers=None, timeout=60) -> httpx.Response:
    form = {} if boxes is None else {"boxes": json.dumps(boxes)}
    return httpx.post(url + "/v1/align", files={"image": ("face.png", data)}, data=form, headers=headers,
                      timeout=timeout)


def _code(response: httpx.Response) -> str:
    code = response.json()["error"]["code"]
    assert response.status_code == CODES[code][0]
    return code


class ManyFaces(Detector):
    """A detector that finds five overlapping 'faces' with known scores."""

    name = "fake"
    scores = [0.3, 0.9, 0.5, 0.95, 0.2]

    def detect(self, image_bgr):
        return [Detection((60.0 + 4 * i, 30.0 + 2 * i, 110.0, 130.0), score, source="file")
                for i, score in enumerate(self.scores)]


def test_detected_faces_are_capped_to_the_best_scores(tiny, face_image):
    aligner = _aligner(tiny, detector=ManyFaces())
    with LiveServer(create_app(aligner, ServeSettings(model_id="tiny", max_faces=2, max_wait_ms=0))) as live:
        response = _post(live.url, encode(face_image))
        metrics = parse_metrics(httpx.get(live.url + "/metrics").text)
        given = _post(live.url, encode(face_image), boxes=[FACE_BOX])
    assert response.status_code == 200, response.text
    record = response.json()["images"][0]
    assert record["faces_dropped"] == 3
    assert [face["score"] for face in record["faces"]] == [0.9, 0.95]  # the two best, in detector order
    assert metrics[("spiga_faces_dropped_total", ())] == 3
    assert given.json()["images"][0]["faces_dropped"] == 0


def test_a_slow_upload_is_cut_off_with_408_and_frees_its_slot(tiny, face_image):
    settings = ServeSettings(model_id="tiny", max_inflight=1, body_timeout=0.5, max_wait_ms=0)
    with LiveServer(create_app(_aligner(tiny), settings)) as live:
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as slow:
            slow.sendall(b"POST /v1/align HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = slow.recv(65536)  # the server answers while the body is still missing
                if not chunk:
                    break
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 408 " in status_line
        body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout"
        assert httpx.get(live.url + "/healthz").json()["inflight"] == 0
        assert _post(live.url, encode(face_image), boxes=[FACE_BOX]).status_code == 200  # the slot is free


def test_a_request_is_answered_at_its_deadline_while_the_model_is_stuck(tiny, face_image, caplog):
    settings = ServeSettings(model_id="tiny", timeout=1.0, max_wait_ms=0)
    with LiveServer(create_app(_aligner(tiny), settings)) as live:
        batcher = live.server.config.app.state.spiga.batcher
        original, release = batcher.predict, threading.Event()

        def stuck(crops):
            release.wait(30)
            return original(crops)

        batcher.predict = stuck
        try:
            response = _post(live.url, encode(face_image), boxes=[FACE_BOX])
            stuck_when_answered = not release.is_set()
        finally:
            release.set()
            batcher.predict = original
        assert _post(live.url, encode(face_image), boxes=[FACE_BOX]).status_code == 200
        gc.collect()  # an unretrieved exception is logged when its future is collected
    assert _code(response) == "timeout" and int(response.headers["retry-after"]) >= 1
    assert stuck_when_answered
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_queued_work_beyond_the_deadline_is_refused_before_the_upload(tiny, face_image):
    with LiveServer(create_app(_aligner(tiny), ServeSettings(model_id="tiny", timeout=5))) as live:
        gate = live.server.config.app.state.spiga.pipeline.admission
        gate.decode_backlog += 60.0  # as if a minute of decoding were queued
        try:
            refused = _post(live.url, encode(face_image), boxes=[FACE_BOX])
            health = httpx.get(live.url + "/healthz").json()
        finally:
            gate.decode_backlog -= 60.0
        accepted = _post(live.url, encode(face_image), boxes=[FACE_BOX])
    assert _code(refused) == "overloaded" and "more than the 5 s deadline" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 60
    assert health["status"] == "ok" and health["backlog_s"] >= 60
    assert accepted.status_code == 200


def test_overload_is_refused_by_the_estimate_and_refused_work_never_runs(tiny, face_image):
    settings = ServeSettings(model_id="tiny", timeout=3.0, max_batch=1, max_wait_ms=0)
    with LiveServer(create_app(_aligner(tiny), settings)) as live:
        pipeline = live.server.config.app.state.spiga.pipeline
        original, passes = pipeline.batcher.predict, []

        def slow(crops):
            passes.append(len(crops))
            time.sleep(0.3)
            return original(crops)

        pipeline.batcher.predict = slow
        # the estimate says a face takes 1 s: about two requests fit in a 3 s deadline
        pipeline.costs.shape, pipeline.costs.level = [(1, 1.0)], 1.0
        pipeline.costs.observe_pass = lambda faces, seconds: None  # keep the estimate fixed

        async def burst():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(
                    client.post(live.url + "/v1/align", files={"image": (f"{i}.png", encode(face_image))},
                                data={"boxes": json.dumps([FACE_BOX])}) for i in range(10)))

        responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 503]
    assert ok and refused and len(ok) + len(refused) + sum(r.status_code == 504 for r in responses) == 10
    for response in refused:
        assert _code(response) == "overloaded" and int(response.headers["retry-after"]) >= 1
    assert len(passes) == len(ok) + sum(r.status_code == 504 for r in responses)  # refused: no pass


def test_api_key_guards_metrics_schema_and_docs(tiny):
    settings = ServeSettings(model_id="tiny", api_key="s3cret", max_wait_ms=0)
    good = {"Authorization": "Bearer s3cret"}
    with LiveServer(create_app(_aligner(tiny), settings)) as live:
        for path in ("/metrics", "/openapi.json", "/docs", "/redoc", "/v1/models"):
            refused = httpx.get(live.url + path)
            assert refused.status_code == 401 and _code(refused) == "unauthorized", path
            assert httpx.get(live.url + path, headers=good).status_code == 200, path
        for path in ("/", "/static/app.js", "/healthz"):
            assert httpx.get(live.url + path).status_code == 200, path


# --------------------------------------------------------------------------- `spiga serve`


def test_cli_reads_precision_and_backend_choices_from_the_library(monkeypatch):
    from spiga import cli
    from spiga.inference.backends import BACKENDS
    from spiga.inference.optimize import PRECISIONS

    seen = {}

    def fake_load(model, **options):
        seen.update(options, model=model)
        raise spiga.SpigaError("stop here")

    monkeypatch.setattr("spiga.load", fake_load)
    parser = cli.build_parser()
    for precision in PRECISIONS:
        assert parser.parse_args(["serve", "--precision", precision]).precision == precision
    for backend in BACKENDS:
        assert parser.parse_args(["serve", "--backend", backend]).backend == backend
    assert cli.main(["serve", "--model", "m.safetensors", "--precision", "bfloat16", "--backend",
                     "onnxruntime"]) == 2
    assert seen["precision"] == "bfloat16" and seen["backend"] == "onnxruntime"
    with pytest.raises(SystemExit):
        cli.main(["serve", "--precision", "float8"])


# --------------------------------------------------------------------------- one request cannot stall it


def _healthz_waits(client: httpx.Client, count: int, while_=lambda: True) -> list[float]:
    """Seconds each of up to `count` /healthz calls took, 50 ms apart, while `while_()`."""
    waits = []
    while len(waits) < count and while_():
        start = time.monotonic()
        assert client.get("/healthz").status_code == 200
        waits.append(time.monotonic() - start)
        time.sleep(0.05)
    return waits


def test_spiga_serve_is_not_stalled_by_one_request(tiny, face_image):
    """The exact forms of the hardening issue, against `spiga serve` in its own process."""
    from websockets.sync.client import connect

    from serve_util import ServeProcess, free_port, many_chunk_png, moving_face_frames
    from spiga.serve.stream import FRAME_HEADER

    port, key = free_port(), "k3y"
    auth = {"Authorization": f"Bearer {key}"}
    args = ["--model", str(tiny), "--host", "127.0.0.1", "--port", str(port), "--timeout", "10", "--api-key", key]
    with ServeProcess(args, port) as server:
        # a boxes field with 64 boxes: answered or refused within 11 s; one box right after: 200
        start = time.monotonic()
        many = httpx.post(server.url + "/v1/align", files={"image": ("face.png", encode(face_image))},
                          data={"boxes": json.dumps([FACE_BOX] * 64)}, headers=auth, timeout=60)
        many_seconds = time.monotonic() - start
        one = _post(server.url, encode(face_image), boxes=[FACE_BOX], headers=auth)
        # a box of 10**400: a 4xx (one line, no trace)
        huge = httpx.post(server.url + "/v1/align", files={"image": ("face.png", encode(face_image))},
                          data={"boxes": "[10, 10, %d, 20]" % 10**400}, headers=auth, timeout=60)
        # six idle unauthenticated sockets do not keep a client with the key from streaming
        idle = contextlib.ExitStack()
        for _ in range(6):
            idle.enter_context(connect(server.url.replace("http", "ws") + "/v1/stream"))
        frame = FRAME_HEADER.pack(0.0) + encode(moving_face_frames(1)[0], ".jpg")
        replies = []
        for form in ({"additional_headers": auth}, {}):
            with connect(server.url.replace("http", "ws") + "/v1/stream", **form) as ws:
                ws.send(json.dumps({"type": "start"} if form else {"type": "start", "api_key": key}))
                replies.append(json.loads(ws.recv(timeout=30))["type"])
                ws.send(frame)
                replies.append(json.loads(ws.recv(timeout=30))["type"])
        idle.close()
        # /healthz answers within 0.5 s while a many-chunk PNG is posted (its header takes seconds to read;
        # read on the event loop, it held every other request for that long)
        chunks = many_chunk_png()

        def post_chunks() -> None:
            try:
                httpx.post(server.url + "/v1/align", files={"image": ("chunks.png", chunks)}, headers=auth, timeout=60)
            except httpx.HTTPError:
                pass  # the server is stopped before it answers

        with httpx.Client(base_url=server.url, timeout=30) as client:
            idle_waits = _healthz_waits(client, 5)
            upload = threading.Thread(target=post_chunks)
            upload.start()
            time.sleep(0.5)  # the upload has arrived; its header is being read
            busy_waits = _healthz_waits(client, 10, while_=upload.is_alive)
    upload.join(30)
    assert many.status_code == 200 or _code(many) in ("too_much_work", "overloaded"), many.text
    assert many_seconds < 11
    assert one.status_code == 200, one.text
    assert 400 <= huge.status_code < 500 and _code(huge) == "bad_box"
    assert replies == ["ready", "faces", "ready", "faces"]
    # within 0.5 s, or (on a machine too loaded to answer even an idle /healthz that fast) within a
    # few times what it takes there; a header read on the event loop holds it for seconds
    assert len(busy_waits) >= 3, busy_waits  # polled while the upload was worked on
    assert max(busy_waits) < max(0.5, 4 * max(idle_waits)), (busy_waits, idle_waits)
    assert "Traceback" not in server.stderr and "never retrieved" not in server.stderr, server.stderr


class PerFaceModel:
    """The tiny model made slower by `seconds` per face, as a larger model on a small machine:
    the server's start-up calibration measures it, so its estimates are honest."""

    def __init__(self, aligner, seconds: float) -> None:
        self.predict_crops, self.seconds, self.passes = aligner.predict_crops, seconds, []

    def __call__(self, crops):
        self.passes.append(len(crops))
        time.sleep(self.seconds * len(crops))
        return self.predict_crops(crops)


def test_own_work_beyond_the_deadline_is_refused_at_once_even_when_idle(tiny, face_image, monkeypatch):
    from spiga.serve import work

    aligner = _aligner(tiny)
    model = aligner.predict_crops = PerFaceModel(aligner, 0.05)
    probed = []

    def probe(*args, **kwargs):
        probed.append(threading.current_thread().name)
        return open_image_header(*args, **kwargs)

    open_image_header = work.open_image_header
    monkeypatch.setattr(work, "open_image_header", probe)
    settings = ServeSettings(model_id="tiny", timeout=2.5, max_batch=16, max_wait_ms=0)
    with LiveServer(create_app(aligner, settings)) as live:
        model.passes.clear()  # the calibration's
        many = _post(live.url, encode(face_image), boxes=[FACE_BOX] * 64)  # over 3.2 s of passes > 2.5 s
        passes_for_many = list(model.passes)
        one = _post(live.url, encode(face_image), boxes=[FACE_BOX])
    assert _code(many) == "too_much_work" and "2.5 s deadline" in many.json()["error"]["message"]
    assert passes_for_many == []  # refused before any work
    assert one.status_code == 200, one.text
    assert probed and all(name.startswith("spiga-decode") for name in probed)  # never on the event loop


def test_answered_work_is_dropped_before_its_next_stage(tiny, face_image):
    from spiga.serve.work import prepare_image

    aligner = _aligner(tiny, detector=None)
    sizes = []

    def sized(width, height):
        sizes.append((width, height))
        answered.set()  # e.g. the request was answered 504 while its header was read

    answered = threading.Event()
    with pytest.raises(ApiError) as dropped:
        prepare_image(aligner, encode(face_image), "face.png", np.array([FACE_BOX]), 10**7, 8, None, sized, answered)
    assert sizes == [(240, 200)] and "dropped" in dropped.value.message
    refused = ApiError("too_much_work", "face.png: too big to be done in time")

    def too_big(width, height):
        raise refused

    with pytest.raises(ApiError) as caught:
        prepare_image(aligner, encode(face_image), "face.png", np.array([FACE_BOX]), 10**7, 8, None, too_big)
    assert caught.value is refused
