"""Everything between a file's pixels and the network's input, in one object.

A model is trained on crops made one way and must be fed crops made the same way:
`Preprocessing` holds that way (crop size, enlargement, focal ratio of the crop camera,
the sampling of the crop, and the rule for images deeper than 8 bits). `ModelConfig`
owns it (`ModelConfig.preprocessing`), checkpoints and ONNX files record it (header field
`preprocessing`, `to_dict` / `from_dict`), and the crop, the camera, training's targets
and the inference path all read it from there instead of keeping their own defaults.
This module is the one place that states the official values (1.6 and 1.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import SpigaError

if TYPE_CHECKING:  # read lazily: io's writers import spiga.face, which reads the constants below
    from .io.images import DepthScaling

#: The official crop side, in pixels (the official network's input).
OFFICIAL_CROP_SIZE = 256
#: The official crop: a square of 1.6 x max(w, h) of the face box.
OFFICIAL_ENLARGE = 1.6
#: The official crop camera: focal length 1.5 x the crop side.
OFFICIAL_FOCAL_RATIO = 1.5
#: Samplings of the crop: nearest neighbour (Pillow's, as the original SPIGA cropped).
INTERPOLATIONS = ("nearest",)
_FIELDS = ("crop_size", "enlarge", "focal_ratio", "interpolation", "depth_scaling")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input.

    Attributes:
        crop_size: side of the square crop in pixels (the network's input size).
        enlarge: crop side over max(w, h) of the face box.
        focal_ratio: focal length of the crop camera over the crop side.
        interpolation: how the crop samples the image (`INTERPOLATIONS`).
        depth_scaling: the rule for images deeper than 8 bits (16-bit thermal, float
            TIFF); None: uint16 / 257 and floats as [0, 1]. `spiga train` records its rule.
    """

    crop_size: int = OFFICIAL_CROP_SIZE
    enlarge: float = OFFICIAL_ENLARGE
    focal_ratio: float = OFFICIAL_FOCAL_RATIO
    interpolation: str = "nearest"
    depth_scaling: "DepthScaling | None" = None

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int) or not 4 <= self.crop_size <= 4096:
            problems.append(f"crop_size must be an integer in 4..4096, got {self.crop_size!r}")
        for name, low, high in (("enlarge", 0.1, 10.0), ("focal_ratio", 1e-2, 100.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and low <= value <= high):
                problems.append(f"{name} must be a number in {low:g}..{high:g}, got {value!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        from .io.images import DepthScaling

        if self.depth_scaling is not None and not isinstance(self.depth_scaling, DepthScaling):
            problems.append(f"depth_scaling must be a DepthScaling rule or None, got {self.depth_scaling!r}")
        if problems:
            raise SpigaError("preprocessing: " + "; ".join(problems))

    @property
    def depth_rule(self) -> str | None:
        """The depth rule as text (`DepthScaling.parse` reads it), or None."""
        return None if self.depth_scaling is None else self.depth_scaling.text()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the header field `preprocessing` of checkpoints and ONNX files."""
        return {"crop_size": self.crop_size, "enlarge": self.enlarge, "focal_ratio": self.focal_ratio,
                "interpolation": self.interpolation, "depth_scaling": self.depth_rule}

    @classmethod
    def from_dict(cls, data: Any) -> "Preprocessing":
        """The inverse of `to_dict`; every field checked, missing ones take the defaults.
        Raises `SpigaError` naming the field."""
        if not isinstance(data, dict):
            raise SpigaError(f"preprocessing must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - set(_FIELDS))
        if unknown:
            raise SpigaError(f"preprocessing has unknown fields {unknown}")
        values = dict(data)
        rule = values.pop("depth_scaling", None)
        if rule is not None and not isinstance(rule, str):
            raise SpigaError("preprocessing: depth_scaling must be a rule such as 'percentile:1:99', or null")
        from .io.images import DepthScaling

        return cls(**values, depth_scaling=None if rule is None else DepthScaling.parse(rule))

    @classmethod
    def from_legacy_header(cls, header: dict[str, Any], default: "Preprocessing") -> "Preprocessing":
        """The object a header of a file written before the `preprocessing` field stands for:
        `default` (the model configuration's crop and camera) with its top-level `depth_scaling`."""
        from .io.images import DepthScaling

        rule = header.get("depth_scaling")
        if rule is None:
            return default
        if not isinstance(rule, str):
            raise SpigaError("header field depth_scaling must be a rule such as 'percentile:1:99'")
        try:
            return cls(default.crop_size, default.enlarge, default.focal_ratio, default.interpolation,
                       DepthScaling.parse(rule))
        except SpigaError as exc:
            raise SpigaError(f"header field depth_scaling: {exc}") from None
