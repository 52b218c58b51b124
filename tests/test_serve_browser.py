"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Playwright's Python package drives the system browser through `executable_path`; no
browser download is needed. Skips, saying why, where Playwright or Chromium is absent
(`.ci/run` installs both where apt is available). The camera mode runs against
Chromium's fake capture device, fed a clip this module writes (a synthetic face that
BlazeFace finds, moving a little from frame to frame).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed: "
                                                            "pip install playwright")

import spiga  # noqa: E402
from spiga.serve import ServeSettings, create_app  # noqa: E402

from conftest import SHARED  # noqa: E402
from serve_util import LiveServer, encode, moving_face_frames, write_y4m  # noqa: E402

PHOTO = SHARED / "fixtures" / "images" / "image_sportsfan.jpg"


def find_chromium() -> str | None:
    """$SPIGA_CHROMIUM, else Debian's chromium (or another Chromium/Chrome on PATH)."""
    configured = os.environ.get("SPIGA_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as running:
        yield running


def _launch(playwright, args: list[str]):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it where apt works; "
                    "or set SPIGA_CHROMIUM=/path/to/chrome)")
    try:
        return playwright.chromium.launch(executable_path=executable, headless=True, args=args)
    except sync_api.Error as exc:
        pytest.skip(f"Chromium at {executable} does not start headless: {str(exc).splitlines()[0]}")


@pytest.fixture(scope="module")
def browser(playwright):
    browser = _launch(playwright, BROWSER_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def camera_browser(playwright, tmp_path_factory):
    """Chromium whose camera is a fake device playing (in a loop) a clip written here."""
    clip = tmp_path_factory.mktemp("camera") / "clip.y4m"
    write_y4m(clip, moving_face_frames(30))
    browser = _launch(playwright, BROWSER_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                                  f"--use-file-for-fake-video-capture={clip}"])
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    aligner = spiga.load(tiny_checkpoint, device="cpu")  # BlazeFace finds the face when no box is given
    with LiveServer(create_app(aligner, ServeSettings(model_id="tiny", max_wait_ms=5))) as live:
        yield live


# Reads the page after drawing: the JSON, the overlay's pixels at each landmark, the photo.
_INSPECT = """() => {
  const overlay = document.getElementById("overlay");
  const photo = document.getElementById("photo");
  const body = JSON.parse(document.getElementById("json").textContent);
  const record = body.images[0];
  const pixels = overlay.getContext("2d").getImageData(0, 0, overlay.width, overlay.height).data;
  let inside = 0, opaque = 0, painted = 0;
  for (const face of record.faces) {
    for (const [x, y] of face.landmarks) {
      const px = Math.floor(x), py = Math.floor(y);
      if (px < 0 || py < 0 || px >= overlay.width || py >= overlay.height) continue;
      inside += 1;
      if (pixels[(py * overlay.width + px) * 4 + 3] > 200) opaque += 1;
    }
  }
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted += 1;
  const image = photo.getContext("2d").getImageData(0, 0, photo.width, photo.height).data;
  let lit = 0;
  for (let i = 0; i < image.length; i += 4) if (image[i] + image[i + 1] + image[i + 2] > 30) lit += 1;
  return {body, inside, opaque, painted, lit, size: [overlay.width, overlay.height],
          faces: overlay.dataset.faces, landmarks: overlay.dataset.landmarks};
}"""


def _upload_and_wait(page, path: Path) -> str:
    page.set_input_files("#file", str(path))
    page.wait_for_selector('#status[data-state="done"], #status[data-state="error"]', timeout=120_000)
    return page.get_attribute("#status", "data-state")


def test_fixture_photo_is_aligned_and_drawn(browser, server, tmp_path):
    if not PHOTO.exists():
        pytest.skip("needs ../shared/fixtures/images/image_sportsfan.jpg (the project's shared fixtures)")
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        # a selector wait, not wait_for_function: its polling evaluates a string in the page,
        # which the app's Content-Security-Policy (no 'unsafe-eval') rightly refuses
        page.locator("#model-info", has_text="98 landmarks").wait_for(timeout=60_000)
        assert _upload_and_wait(page, PHOTO) == "done", page.text_content("#status")
        seen = page.evaluate(_INSPECT)
        page.screenshot(path=str(tmp_path / "page.png"))
    finally:
        page.close()
    faces = seen["body"]["images"][0]["faces"]
    assert len(faces) == 1  # BlazeFace finds the one face of the photo
    assert seen["size"] == [1024, 768]
    assert seen["faces"] == "1" and seen["landmarks"] == "98"
    assert seen["inside"] > 0 and seen["opaque"] == seen["inside"]  # a dot under every landmark
    assert seen["painted"] > 98 and seen["lit"] > 1024 * 768 // 2  # overlay drawn, photo shown


def test_boxes_typed_in_the_page_are_used(browser, server, tmp_path, face_image):
    path = tmp_path / "face.png"
    path.write_bytes(encode(face_image))
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        page.fill("#boxes", "[[70, 35, 100, 130]]")
        assert _upload_and_wait(page, path) == "done", page.text_content("#status")
        seen = page.evaluate(_INSPECT)
        shown = json.loads(page.text_content("#json"))
    finally:
        page.close()
    face = shown["images"][0]["faces"][0]
    assert face["box"] == [70, 35, 100, 130] and len(face["landmarks"]) == 98
    assert seen["landmarks"] == "98" and seen["opaque"] == seen["inside"] > 0
    assert np.array(face["pose_axes"]).shape == (4, 2)


def test_errors_are_shown(browser, server, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        assert _upload_and_wait(page, path) == "error"
        status = page.text_content("#status")
        shown = json.loads(page.text_content("#json"))
    finally:
        page.close()
    assert status.startswith("not_an_image") and shown["error"]["code"] == "not_an_image"


# Reads the page during the camera mode: the last stream answer and the overlay's pixels.
_INSPECT_LIVE = """() => {
  const overlay = document.getElementById("overlay");
  const message = JSON.parse(document.getElementById("json").textContent);
  const pixels = overlay.getContext("2d").getImageData(0, 0, overlay.width, overlay.height).data;
  let inside = 0, opaque = 0;
  for (const face of message.faces) {
    for (const [x, y] of face.landmarks) {
      const px = Math.floor(x), py = Math.floor(y);
      if (px < 0 || py < 0 || px >= overlay.width || py >= overlay.height) continue;
      inside += 1;
      if (pixels[(py * overlay.width + px) * 4 + 3] > 200) opaque += 1;
    }
  }
  const video = document.getElementById("camera");
  return {message, inside, opaque, size: [overlay.width, overlay.height], playing: !video.paused,
          video: [video.videoWidth, video.videoHeight]};
}"""


def test_camera_mode_draws_tracked_landmarks_over_the_live_video(camera_browser, server, tmp_path):
    page = camera_browser.new_page()
    problems = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    try:
        page.goto(server.url + "/")
        page.locator("#model-info", has_text="98 landmarks").wait_for(timeout=60_000)
        page.click("#camera-start")
        frames, give_up = 0, time.monotonic() + 240  # a bound on the wait, not a speed check
        while frames < 20 and time.monotonic() < give_up and page.get_attribute("#status", "data-state") != "error":
            page.wait_for_timeout(250)
            frames = int(page.get_attribute("#overlay", "data-live-frames") or 0)
        status = page.text_content("#status")
        ids = json.loads(page.get_attribute("#overlay", "data-live-ids") or "[]")
        seen = page.evaluate(_INSPECT_LIVE)
        page.screenshot(path=str(tmp_path / "camera.png"))
        page.click("#camera-stop")
        stopped = page.get_attribute("#camera-start", "disabled") is None
    finally:
        page.close()
    assert frames >= 20, status  # landmarks drawn on at least 20 frames of the live video
    assert ids == [0]  # one face, one id from first to last
    assert seen["playing"] and seen["video"] == [480, 360] and seen["size"] == [480, 360]
    assert seen["message"]["type"] == "faces" and len(seen["message"]["faces"]) == 1
    assert seen["inside"] > 0 and seen["opaque"] == seen["inside"]  # a dot under every landmark
    assert stopped
    assert not problems, problems
