"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Playwright's Python package drives the system browser through `executable_path`; no
browser download is needed. Skips, saying why, where Playwright or Chromium is absent
(`.ci/run` installs both where apt is available).
"""

from __future__ import annotations

import json
import os
import shutil
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
from serve_util import LiveServer, encode  # noqa: E402

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


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it where apt works; "
                    "or set SPIGA_CHROMIUM=/path/to/chrome)")
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except sync_api.Error as exc:
            pytest.skip(f"Chromium at {executable} does not start headless: {str(exc).splitlines()[0]}")
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
