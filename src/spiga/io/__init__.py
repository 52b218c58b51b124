"""Files in and out: images, JSON, JSON Lines, SPIGA JSON, faces as .pts / CSV; every
write atomic.

- `images`: `read_image` (any path, array, PIL image or upload -> BGR uint8, with the
  pixel limit checked before decoding), `write_image`;
- `files`: `parse_json` / `read_json_file` with errors naming the file, `write_atomic`,
  `write_json_atomic`;
- `jsonl`: `JsonlWriter` (append-only, resumable), `read_jsonl_records`;
- `spiga_json`: the original SPIGA annotation JSON, one parser for training and evaluation;
- `faces`: `.pts` and CSV writers of aligned faces.
"""

from .faces import FaceCsvWriter, pts_text, write_pts_files
from .files import is_file, parse_json, read_json_file, write_atomic, write_json_atomic
from .images import (HEIF_SUPPORT, MAX_PIXELS, DepthScaling, read_image, read_image_array, read_image_bytes, to_bgr8,
                     write_image)
from .jsonl import JsonlWriter, read_jsonl_records

__all__ = [
    "DepthScaling", "FaceCsvWriter", "HEIF_SUPPORT", "JsonlWriter", "MAX_PIXELS", "is_file", "parse_json", "pts_text",
    "read_image", "read_image_array", "read_image_bytes", "read_json_file", "read_jsonl_records", "to_bgr8", "write_atomic",
    "write_image", "write_json_atomic", "write_pts_files",
]
