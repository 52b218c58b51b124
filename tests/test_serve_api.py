"""The HTTP API, against a real uvicorn server on 127.0.0.1 with the tiny random model.

Covers every error code, concurrency (50 simultaneous requests answer exactly as 50
sequential ones), that concurrent requests are really batched, and overload (503 +
Retry-After) with a tiny queue.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("multipart", reason="the serve extra (python-multipart) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is needed to call the server")

import spiga  # noqa: E402
from spiga.serve import CODES, ServeSettings, create_app  # noqa: E402

from serve_util import LiveServer, batch_histogram, encode, parse_metrics, png_header_only  # noqa: E402

FACE_BOX = [70.0, 35.0, 100.0, 130.0]


@pytest.fixture(scope="module")
def aligner(tiny_checkpoint):
    return spiga.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def server(aligner):
    settings = ServeSettings(model_id="tiny", max_batch=16, max_wait_ms=20, max_image_mb=1, max_pixels=5_000_000)
    with LiveServer(create_app(aligner, settings)) as live:
        yield live


@pytest.fixture(scope="module")
def face_png(face_image) -> bytes:
    return encode(face_image)


def post_align(url: str, data: bytes, name: str = "face.png", boxes=None, **fields) -> httpx.Response:
    form = dict(fields)
    if boxes is not None:
        form["boxes"] = boxes if isinstance(boxes, str) else json.dumps(boxes)
    return httpx.post(url + "/v1/align", files={"image": (name, data, "application/octet-stream")}, data=form,
                      timeout=60)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] in CODES
    assert response.status_code == CODES[error["code"]][0]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    return error


# --------------------------------------------------------------------------- answers


def test_info_endpoints(server):
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    models = httpx.get(server.url + "/v1/models").json()
    model = models["models"][0]
    assert model["id"] == "tiny" and model["landmarks"] == 98 and model["landmark_set"] == "wflw98"
    assert len(model["point_colours"]) == 98 and all(c.startswith("#") and len(c) == 7 for c in model["point_colours"])
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/align", "/v1/align/batch", "/v1/models", "/healthz", "/metrics"} <= set(schema["paths"])
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "spiga_requests_total" in metrics.text and "spiga_batch_faces_bucket" in metrics.text


def test_align_matches_the_library(server, aligner, face_image, face_png):
    response = post_align(server.url, face_png, boxes=[FACE_BOX])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny"
    record = body["images"][0]
    assert (record["path"], record["width"], record["height"]) == ("face.png", 240, 200)
    expected = aligner.align(face_image, boxes=[FACE_BOX])[0]
    face = record["faces"][0]
    assert face["box"] == FACE_BOX
    np.testing.assert_allclose(face["landmarks"], expected.landmarks, atol=1e-3)
    np.testing.assert_allclose([face["headpose"][k] for k in ("yaw", "pitch", "roll", "tx", "ty", "tz")],
                               expected.headpose.as_array(), atol=1e-3)
    assert len(face["pose_axes"]) == 4  # origin and three axis ends, image pixels
    assert "score" not in face  # boxes were given


def test_a_single_box_and_jpeg_work(server, face_image):
    response = post_align(server.url, encode(face_image, ".jpg"), name="x.jpg", boxes=FACE_BOX)
    assert response.status_code == 200
    assert len(response.json()["images"][0]["faces"]) == 1


def test_request_id_is_echoed(server, face_png):
    response = httpx.post(server.url + "/v1/align", files={"image": ("a.png", b"nope")},
                          headers={"X-Request-ID": "client-42"})
    assert response.headers["x-request-id"] == "client-42"
    assert error_of(response)["request_id"] == "client-42"
    weird = httpx.get(server.url + "/nowhere", headers={"X-Request-ID": "bad id\twith spaces"})
    assert weird.headers["x-request-id"] != "bad id\twith spaces"  # replaced by our own


def test_batch_endpoint_answers_per_image(server, face_png):
    files = [("images", ("good.png", face_png)), ("images", ("notes.txt", b"hello")),
             ("images", ("far.png", face_png))]
    boxes = json.dumps([[FACE_BOX], None, [[1000, 1000, 10, 10]]])
    response = httpx.post(server.url + "/v1/align/batch", files=files, data={"boxes": boxes}, timeout=60)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [image["path"] for image in images] == ["good.png", "notes.txt", "far.png"]
    assert len(images[0]["faces"]) == 1 and "error" not in images[0]
    assert images[1]["error"]["code"] == "not_an_image" and images[1]["faces"] == []
    assert images[2]["error"]["code"] == "box_outside_image"
    mismatch = httpx.post(server.url + "/v1/align/batch", files=files[:2], data={"boxes": "[null]"})
    assert error_of(mismatch)["code"] == "bad_request"


def test_batch_answers_the_other_images_beside_a_box_that_cannot_be_cropped(server, face_png):
    files = [("images", (f"{i}.png", face_png)) for i in range(4)]
    boxes = "[[%s], [[10, 10, %d, 20]], [[10, 10, 1.79e308, 1.79e308]], [%s]]" % (FACE_BOX, 10**400, FACE_BOX)
    response = httpx.post(server.url + "/v1/align/batch", files=files, data={"boxes": boxes}, timeout=60)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [len(image["faces"]) for image in images] == [1, 0, 0, 1]
    assert [image.get("error", {}).get("code") for image in images] == [None, "bad_box", "bad_box", None]
    assert "boxes[1]" in images[1]["error"]["message"] and "cannot be cropped" in images[2]["error"]["message"]


# --------------------------------------------------------------------------- every error code


def test_not_an_image(server, face_image):
    assert error_of(post_align(server.url, b"just text", name="photo.jpg"))["code"] == "not_an_image"
    truncated = encode(face_image, ".jpg")
    error = error_of(post_align(server.url, truncated[: len(truncated) // 2], name="cut.jpg", boxes=FACE_BOX))
    assert error["code"] == "not_an_image" and "cut.jpg" in error["message"]
    assert error_of(post_align(server.url, b"", name="empty.png"))["code"] in ("not_an_image", "bad_request")


def test_png_declared_in_a_wrong_extension_is_read_by_content(server, face_png):
    assert post_align(server.url, face_png, name="really_png.gif", boxes=FACE_BOX).status_code == 200


@pytest.mark.parametrize("size", [(3000, 3000), (100_000, 100_000)])
def test_too_many_pixels_refused_from_the_header(server, size):
    bomb = png_header_only(*size)  # a few dozen bytes declaring millions of pixels
    assert len(bomb) < 100
    error = error_of(post_align(server.url, bomb, name="bomb.png", boxes=FACE_BOX))
    assert error["code"] == "too_many_pixels"


def test_image_too_large(server):
    limit = 1024 * 1024
    big = b"\x89PNG\r\n\x1a\n" + bytes(limit + 10)  # over the per-image limit, inside the body limit
    assert error_of(post_align(server.url, big, name="big.png"))["code"] == "image_too_large"
    huge = bytes(limit + 200_000)  # over the body limit: refused from Content-Length, body unread
    assert error_of(post_align(server.url, huge, name="huge.png"))["code"] == "image_too_large"


def test_image_too_large_without_content_length(server):
    """A chunked upload is counted as it arrives and cut off at the limit."""
    boundary = "spiga-test-boundary"
    payload = bytes(1024 * 1024 + 200_000)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for start in range(0, len(body), 16384):
            yield body[start:start + 16384]

    before = parse_metrics(httpx.get(server.url + "/metrics").text)
    try:
        response = httpx.post(server.url + "/v1/align", content=chunks(),
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=60)
    except httpx.TransportError:
        pytest.skip("the connection closed before the client could read the answer (platform socket buffers)")
    assert error_of(response)["code"] == "image_too_large"
    after = parse_metrics(httpx.get(server.url + "/metrics").text)

    def errors(values, code):
        return values.get(("spiga_errors_total", (("code", code),)), 0.0)

    assert errors(after, "image_too_large") == errors(before, "image_too_large") + 1
    assert errors(after, "bad_request") == errors(before, "bad_request")  # the cut body is one error, not two


@pytest.mark.parametrize("boxes, code", [
    ([[1, 2, 3]], "bad_box"),
    ([[10, 10, 0, 50]], "bad_box"),
    ([[10, 10, -5, 50]], "bad_box"),
    ([["a", 1, 2, 3]], "bad_box"),
    ([[True, 1, 2, 3]], "bad_box"),
    ([], "bad_box"),
    ({"x": 1}, "bad_box"),
    ("[[1e999, 0, 10, 10]]", "bad_box"),
    ("[[NaN, 0, 10, 10]]", "bad_box"),
    ("not json", "bad_request"),
    ("[" * 100_000, "bad_request"),
    ([[5000, 10, 50, 50]], "box_outside_image"),
    ([[-100, 10, 50, 50]], "box_outside_image"),
    ("[10, 10, %d, 20]" % 10**400, "bad_box"),  # a JSON integer no float holds
    ("[10, 10, 1.79e308, 1.79e308]", "bad_box"),  # finite, but its crop overflows
    ("[10, 10, 1e-320, 1e-320]", "bad_box"),  # positive, but its crop's scale overflows
])
def test_bad_boxes(server, face_png, boxes, code):
    assert error_of(post_align(server.url, face_png, boxes=boxes))["code"] == code


def test_too_many_boxes(server, face_png):
    error = error_of(post_align(server.url, face_png, boxes=[FACE_BOX] * 65))
    assert error["code"] == "bad_request" and "65 boxes" in error["message"]


def test_no_face_found(server):
    blank = encode(np.full((96, 96, 3), 128, np.uint8))
    error = error_of(post_align(server.url, blank, name="wall.png"))
    assert error["code"] == "no_face_found" and "wall.png" in error["message"]


def test_unknown_model(server, face_png):
    assert error_of(post_align(server.url, face_png, boxes=FACE_BOX, model="nope"))["code"] == "unknown_model"
    assert post_align(server.url, face_png, boxes=FACE_BOX, model="tiny").status_code == 200


def test_bad_requests(server):
    assert error_of(httpx.post(server.url + "/v1/align"))["code"] == "bad_request"
    assert error_of(httpx.post(server.url + "/v1/align", data={"image": "not a file"}))["code"] == "bad_request"
    assert error_of(httpx.post(server.url + "/v1/align", content=b"--x\r\ngarbage",
                               headers={"content-type": "multipart/form-data; boundary=x"}))["code"] == "bad_request"
    assert error_of(httpx.get(server.url + "/v1/nothing"))["code"] == "not_found"
    assert error_of(httpx.get(server.url + "/v1/align"))["code"] == "method_not_allowed"


def test_internal_errors_leave_no_trace(server, face_png):
    batcher = server.server.config.app.state.spiga.batcher
    original = batcher.predict

    def broken(crops):
        raise RuntimeError("secret detail: /home/model/weights")

    batcher.predict = broken
    try:
        response = post_align(server.url, face_png, boxes=FACE_BOX)
    finally:
        batcher.predict = original
    error = error_of(response)
    assert error["code"] == "internal"
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert error["request_id"] in error["message"]


def test_api_key(aligner, face_png):
    settings = ServeSettings(model_id="tiny", api_key="s3cret", max_wait_ms=0)
    with LiveServer(create_app(aligner, settings)) as live:
        assert error_of(httpx.get(live.url + "/v1/models"))["code"] == "unauthorized"
        wrong = httpx.get(live.url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert error_of(wrong)["code"] == "unauthorized"
        refused = post_align(live.url, face_png, boxes=FACE_BOX)
        assert error_of(refused)["code"] == "unauthorized"
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.get(live.url + "/v1/models", headers=good).status_code == 200
        ok = httpx.post(live.url + "/v1/align", files={"image": ("f.png", face_png)},
                        data={"boxes": json.dumps([FACE_BOX])}, headers=good, timeout=60)
        assert ok.status_code == 200
        assert httpx.get(live.url + "/healthz").status_code == 200  # stays open


# --------------------------------------------------------------------------- concurrency and batching


def _boxes_for(i: int) -> list[float]:
    """A different box per request, so a mixed-up answer cannot pass."""
    return [60.0 + (i % 10) * 2, 30.0 + (i // 10) * 3, 100.0 + i % 7, 130.0]


async def _concurrent(url: str, data: bytes, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(
            client.post(url + "/v1/align", files={"image": (f"{i}.png", data)},
                        data={"boxes": json.dumps([_boxes_for(i)])}) for i in range(count)))


def test_fifty_concurrent_requests_answer_as_fifty_sequential(server, face_png):
    before = batch_histogram(httpx.get(server.url + "/metrics").text)
    concurrent = asyncio.run(_concurrent(server.url, face_png, 50))
    after = batch_histogram(httpx.get(server.url + "/metrics").text)
    with httpx.Client(timeout=60) as client:
        sequential = [client.post(server.url + "/v1/align", files={"image": (f"{i}.png", face_png)},
                                  data={"boxes": json.dumps([_boxes_for(i)])}) for i in range(50)]
    for i, (a, b) in enumerate(zip(concurrent, sequential)):
        assert a.status_code == b.status_code == 200
        face_a, face_b = a.json()["images"][0]["faces"][0], b.json()["images"][0]["faces"][0]
        assert face_a["box"] == face_b["box"] == _boxes_for(i)
        np.testing.assert_allclose(face_a["landmarks"], face_b["landmarks"], atol=1e-3)
        np.testing.assert_allclose(list(face_a["headpose"].values()), list(face_b["headpose"].values()), atol=1e-4)
    passes = after["count"] - before["count"]
    single = after["1.0"] - before["1.0"]
    assert passes < 50  # fewer forward passes than requests
    assert single < passes  # at least one pass held more than one face


def test_full_queue_answers_503_with_retry_after(aligner, face_png):
    # one face may wait, and it waits 2 s for company: the others arriving meanwhile are refused
    settings = ServeSettings(model_id="tiny", max_batch=64, max_wait_ms=2000, max_queue=1, timeout=60)
    with LiveServer(create_app(aligner, settings)) as live:
        responses = asyncio.run(_concurrent(live.url, face_png, 6))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1
    assert set(statuses) <= {200, 503}
    for response in responses:
        if response.status_code == 503:
            assert error_of(response)["code"] == "overloaded"
            assert int(response.headers["retry-after"]) >= 1


def test_too_many_requests_in_flight_answers_503(aligner, face_png):
    settings = ServeSettings(model_id="tiny", max_batch=64, max_wait_ms=2000, max_inflight=2, timeout=60)
    with LiveServer(create_app(aligner, settings)) as live:
        responses = asyncio.run(_concurrent(live.url, face_png, 6))
        assert httpx.get(live.url + "/healthz").status_code == 200  # not counted as align work
    refused = [r for r in responses if r.status_code == 503]
    assert len(refused) >= 1 and sum(r.status_code == 200 for r in responses) >= 1
    assert all(error_of(r)["code"] == "overloaded" and "in progress" in error_of(r)["message"] for r in refused)


# --------------------------------------------------------------------------- the web page


def test_web_page_is_served_with_a_strict_policy(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<canvas id="overlay"' in page.text
    assert httpx.head(server.url + "/").status_code == 200
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{server.url}/static/{name}").status_code == 200
    assert error_of(httpx.get(server.url + "/static/../../etc/passwd"))["code"] == "not_found"

