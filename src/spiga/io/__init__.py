"""Files in and out: images, JSON, JSON Lines, SPIGA JSON, faces as .pts / CSV; every
output through one writer (`files.open_output`).

- `images`: `read_image` (any path, array, PIL image or upload -> BGR uint8, with the
  pixel limit checked before decoding), `write_image`;
- `files`: `parse_json` / `read_json_file` with errors naming the file; `open_output`,
  `write_output`, `write_json` (atomic for regular files, written through for devices and
  FIFOs, `-` for standard output) and `check_outputs_apart` (no output over an input);
- `jsonl`: `JsonlWriter` (append-only, resumable), `read_jsonl_records`;
- `spiga_json`: the original SPIGA annotation JSON, one parser for training and evaluation;
- `faces`: `.pts` and CSV writers of aligned faces;
- `records`: `image_record` (the per-image result record) and `ResultSink` (one writer for
  JSON, JSON Lines, CSV, `.pts` and drawings).
"""

from .faces import FaceCsvWriter, pts_text, write_pts_files
from .files import (STDOUT, check_outputs_apart, is_file, is_stdout, open_output, output_folder, parse_json,
                    read_json_file, write_atomic, write_json, write_json_atomic, write_output)
from .images import (HEIF_SUPPORT, MAX_PIXELS, DepthScaling, check_image_name, read_image, read_image_array,
                     read_image_bytes, to_bgr8,
                     write_image)
from .jsonl import JsonlWriter, read_jsonl_records
from .records import ResultSink, check_run_outputs, image_record

__all__ = [
    "DepthScaling", "FaceCsvWriter", "HEIF_SUPPORT", "JsonlWriter", "MAX_PIXELS", "ResultSink", "STDOUT",
    "check_image_name", "check_outputs_apart", "check_run_outputs", "image_record", "is_file", "is_stdout",
    "open_output", "output_folder", "parse_json", "pts_text",
    "read_image", "read_image_array", "read_image_bytes", "read_json_file", "read_jsonl_records", "to_bgr8", "write_atomic",
    "write_image", "write_json", "write_json_atomic", "write_output", "write_pts_files",
]
