"""The server's errors: a stable code, an HTTP status and a one-line message.

Every error response has the body

    {"error": {"code": "too_many_pixels", "message": "upload.jpg: image of ...", "request_id": "3f2a..."}}

Clients branch on `code` (the list below never changes meaning); `message` is for people
and may be reworded. No stack trace ever leaves the server: unexpected exceptions are
logged with the request id and answered with code `internal`.
"""

from __future__ import annotations

from ..errors import BoxError, BoxOutsideImage, ImageError, InputError, ModelNotFound, PixelLimitError, SpigaError

#: code -> (HTTP status, what it means). The documentation's table (docs/serving.md) lists them.
CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "malformed request: missing or unparsable field, wrong type"),
    "not_an_image": (400, "the upload is not a readable image (unknown format, truncated, corrupt)"),
    "bad_box": (422, "a box is not 4 finite numbers x, y, w, h with w, h > 0"),
    "box_outside_image": (422, "a box lies entirely outside the image"),
    "no_face_found": (422, "no box given and the detector found no face"),
    "unauthorized": (401, "an API key is set and the request lacks `Authorization: Bearer KEY`"),
    "unknown_model": (404, "the request names a model this server does not serve"),
    "not_found": (404, "no such endpoint"),
    "method_not_allowed": (405, "the endpoint exists but not for this HTTP method"),
    "request_timeout": (408, "the request body did not arrive within the body-read deadline"),
    "image_too_large": (413, "the upload (or the request body) exceeds the size limit"),
    "too_many_pixels": (413, "the image's declared dimensions exceed the pixel limit"),
    "too_much_work": (413, "the request's own work (faces, pixels) is estimated to take longer than the "
                           "server's timeout even when idle: send fewer faces or images, or smaller images"),
    "overloaded": (503, "the request cannot be answered in time (queued work, queue full or too many in "
                        "flight); retry after the `Retry-After` seconds"),
    "timeout": (504, "the request was not done within its deadline; retry after the `Retry-After` seconds"),
    "internal": (500, "an unexpected server error (logged with the request id)"),
}


class ApiError(Exception):
    """An error answered to the client as JSON with a stable code."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.status = CODES[code][0]
        self.message = one_line(message)
        self.headers = headers or {}


def one_line(text: str, limit: int = 300) -> str:
    """The first line of `text`, at most `limit` characters."""
    text = str(text).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def from_spiga_error(exc: SpigaError) -> ApiError:
    """Map a library error to its API code."""
    if isinstance(exc, PixelLimitError):
        return ApiError("too_many_pixels", str(exc))
    if isinstance(exc, ImageError):
        return ApiError("not_an_image", str(exc))
    if isinstance(exc, BoxOutsideImage):
        return ApiError("box_outside_image", str(exc))
    if isinstance(exc, BoxError):
        return ApiError("bad_box", str(exc))
    if isinstance(exc, ModelNotFound):
        return ApiError("unknown_model", str(exc))
    if isinstance(exc, InputError):
        return ApiError("bad_request", str(exc))
    return ApiError("bad_request", str(exc))
