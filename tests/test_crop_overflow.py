"""Finite boxes whose crop float64 cannot represent: a `BoxError` where boxes are cropped,
exit 2 and one line from the CLI (the server's 422 is in test_serve_api.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from spiga.errors import BoxError
from spiga.geometry import crop_images, crop_matrices
from spiga.preprocess import Preprocessing


@pytest.mark.parametrize("box", [
    (10.0, 10.0, 1.79e308, 1.79e308),  # the enlarged side overflows to infinity
    (-1.7e308, -1.7e308, 1.7e308, 1.7e308),  # the centre does
    (10.0, 10.0, 1e-320, 1e-320),  # the scale does (a denormal side)
])
def test_an_uncroppable_box_is_a_box_error(box):
    with pytest.raises(BoxError, match="box 1 .* cannot be cropped"):
        crop_matrices(np.array([(10.0, 10.0, 50.0, 50.0), box]), Preprocessing())


def test_a_huge_but_representable_box_crops_without_warnings():
    image = np.full((20, 30, 3), 7, np.uint8)
    with np.errstate(all="raise"):  # no overflow in the index arithmetic either
        crops, matrices = crop_images(image, np.array([(0.0, 0.0, 1e300, 1e300)]), Preprocessing(crop_size=8))
    assert np.isfinite(matrices).all() and crops.shape == (1, 8, 8, 3)


def test_cli_refuses_an_overflowing_box_in_one_line(tiny_checkpoint, tmp_path, capsys):
    from spiga import cli

    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((200, 240, 3), 40, np.uint8))
    code = cli.main(["align", str(image), "--model", str(tiny_checkpoint), "--box", "10", "10", "1.79e308",
                     "1.79e308", "--json", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) <= 2 and "cannot be cropped" in err and "Traceback" not in err and "Warning" not in err
    assert not (tmp_path / "out.json").exists()
