"""The error types of spiga.

Every error a user can cause (a bad file, a bad argument, a missing model) is a
`SpigaError` whose message names the file or value and the problem. The CLI prints
the message and exits non-zero; the library never lets a deep traceback stand in
for an explanation.
"""

from __future__ import annotations


class SpigaError(Exception):
    """Base class of every error spiga raises on purpose."""


class ImageError(SpigaError):
    """An image that cannot be read or used (missing, truncated, too large, bad shape)."""


class PixelLimitError(ImageError):
    """An image whose declared dimensions exceed the pixel limit (refused before decoding)."""


class CheckpointError(SpigaError):
    """A checkpoint that cannot be loaded (corrupt, truncated, wrong shapes, unsafe)."""


class DatasetError(SpigaError):
    """An annotation or prediction file that is malformed."""


class ModelNotFound(SpigaError):
    """A named model that does not exist, or whose files cannot be fetched."""


class InputError(SpigaError):
    """A bad argument: a box with non-positive size, a box outside the image, ..."""


class BoxError(InputError):
    """A face box that is not 4 finite numbers x, y, w, h with a positive width and height."""


class BoxOutsideImage(InputError):
    """A face box that lies entirely outside its image."""


class OutputError(InputError):
    """An output that cannot be written as asked: a folder where a file is expected (or the
    reverse), `-` for a format that is not a stream, an output that would overwrite an input."""
