"""One reader per annotation format.

Each module has `NAME` and `read(path, root, landmark_set, bad) -> (LandmarkSet,
list[Sample])`: `path` is the annotation file or folder, `root` the image folder (None:
the format's default), `landmark_set` the layout to use (None: the format's own),
`bad` a `BadEntries` that stops or skips a bad entry.
"""

from __future__ import annotations

from . import cofw, custom, ibug300w, merlrav, spiga_json, wflw

#: Format name on the command line -> reader module.
READERS = {module.NAME: module for module in (wflw, ibug300w, cofw, merlrav, spiga_json, custom)}

__all__ = ["READERS"]
