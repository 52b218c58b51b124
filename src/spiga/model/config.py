"""Model sizes. The official SPIGA is `ModelConfig.official(L, E)`; smaller variants
train on a CPU. Landmark and edge counts come from the landmark set."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ..errors import SpigaError
from ..io.images import DepthScaling
from ..preprocess import OFFICIAL_ENLARGE, OFFICIAL_FOCAL_RATIO, Preprocessing

#: The range, inclusive, of every size a configuration (and so a checkpoint) may have.
#: Generous: the official model and the `small` and `tiny` sizes lie well inside; a
#: value outside is refused, so that a small crafted checkpoint cannot ask for a huge
#: network. Widths of `shape_hidden` and `decoder_hidden` are bounded by `HIDDEN_WIDTH`,
#: their lengths by `HIDDEN_LAYERS`; both `stem_channels` by the `channels` range.
BOUNDS: dict[str, tuple[float, float]] = {
    "num_landmarks": (2, 1000),
    "num_edges": (1, 256),
    "image_size": (32, 512),       # with hourglass_depth: image_size == 16 * 2**hourglass_depth
    "channels": (2, 512),
    "num_stacks": (1, 8),
    "hourglass_depth": (1, 5),
    "embed_dim": (1, 1024),
    "gat_dim": (1, 1024),
    "gat_layers": (1, 8),
    "gat_heads": (1, 16),
    "cascade_steps": (1, 6),
    "window_kernel": (2, 15),
    "window_scale": (1e-3, 1.0),
    "focal_ratio": (1e-2, 100.0),
    "crop_enlarge": (0.1, 10.0),
}
HIDDEN_WIDTH: tuple[int, int] = (1, 1024)
HIDDEN_LAYERS: tuple[int, int] = (1, 8)
_INTEGER_TUPLES = ("stem_channels", "shape_hidden", "decoder_hidden")


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the network.

    Attributes:
        num_landmarks: L, points predicted.
        num_edges: E, edge groups of the boundary attention.
        image_size: side of the square input crop (the feature map is a quarter of it).
        stem_channels: widths of the stem's first convolution and first residual.
        channels: width of the hourglasses and of the visual features.
        num_stacks: stacked hourglasses.
        hourglass_depth: down-sampling levels per hourglass.
        embed_dim: width of a landmark's embedding (window conv + shape encoder).
        gat_dim: width of the GAT layers after the first.
        gat_layers: GAT layers per cascade step.
        gat_heads: attention heads.
        cascade_steps: refinement steps.
        window_kernel: side, in samples, of the feature window around a landmark.
        window_scale: window side at the first step as a fraction of the feature map;
            halved at every step.
        shape_hidden: hidden widths of the relative-position encoder.
        decoder_hidden: hidden widths of the offset decoder.
        focal_ratio: focal length of the crop camera over the image side.
        crop_enlarge: crop side over max(w, h) of the face box.
        crop_interpolation: how the crop samples the image (`spiga.preprocess.INTERPOLATIONS`).
        depth_scaling: the rule for images deeper than 8 bits the model was trained with
            (`spiga.io.DepthScaling` text, e.g. "percentile:1:99"), or None.

    The last five fields, with `image_size`, make the model's `preprocessing`.
    """

    num_landmarks: int = 98
    num_edges: int = 15
    image_size: int = 256
    stem_channels: tuple[int, int] = (64, 128)
    channels: int = 256
    num_stacks: int = 4
    hourglass_depth: int = 4
    embed_dim: int = 512
    gat_dim: int = 256
    gat_layers: int = 4
    gat_heads: int = 4
    cascade_steps: int = 3
    window_kernel: int = 7
    window_scale: float = 0.25
    shape_hidden: tuple[int, ...] = (256, 256)
    decoder_hidden: tuple[int, ...] = (256, 128, 64, 32)
    focal_ratio: float = OFFICIAL_FOCAL_RATIO
    crop_enlarge: float = OFFICIAL_ENLARGE
    crop_interpolation: str = "nearest"
    depth_scaling: str | None = None

    def __post_init__(self) -> None:
        problems = _out_of_bounds(self)
        if problems:  # the checks below compare and divide: only on values of the right type and range
            raise SpigaError("model configuration: " + "; ".join(problems))
        if self.num_landmarks < 2:
            problems.append("num_landmarks must be >= 2")
        if self.num_edges < 1:
            problems.append("num_edges must be >= 1")
        if self.image_size % 4:
            problems.append("image_size must be a multiple of 4")
        inner = self.feature_size // 2 ** self.hourglass_depth
        if inner != 4 or self.feature_size % 2 ** self.hourglass_depth:
            problems.append(
                f"image_size / 4 / 2**hourglass_depth must be 4 (the pose head reduces 4x4 to 1x1); "
                f"got {self.feature_size} / {2 ** self.hourglass_depth}")
        if self.num_stacks < 1 or self.cascade_steps < 1 or self.gat_layers < 1:
            problems.append("num_stacks, cascade_steps and gat_layers must be >= 1")
        if self.channels % 2 or any(c % 2 for c in self.stem_channels):
            problems.append("channel widths must be even (residual bottlenecks halve them)")
        if self.gat_dim % self.gat_heads:
            problems.append("gat_dim must be divisible by gat_heads")
        if self.window_kernel < 2:
            problems.append("window_kernel must be >= 2")
        try:
            self.preprocessing  # checks the crop's sampling and the depth rule
        except SpigaError as exc:
            problems.append(str(exc))
        if problems:
            raise SpigaError("model configuration: " + "; ".join(problems))

    @property
    def feature_size(self) -> int:
        return self.image_size // 4

    @property
    def preprocessing(self) -> Preprocessing:
        """Everything between an image file and the network's input, as one object."""
        if self.depth_scaling is not None and not isinstance(self.depth_scaling, str):
            raise SpigaError(f"preprocessing: depth_scaling must be a rule such as 'percentile:1:99', "
                             f"got {_describe(self.depth_scaling)}")
        rule = None if self.depth_scaling is None else DepthScaling.parse(self.depth_scaling)
        return Preprocessing(self.image_size, self.crop_enlarge, self.focal_ratio, self.crop_interpolation, rule)

    def with_preprocessing(self, preprocessing: Preprocessing) -> "ModelConfig":
        """This configuration with another preprocessing (its crop size must be `image_size`)."""
        if preprocessing.crop_size != self.image_size:
            raise SpigaError(f"preprocessing crop_size {preprocessing.crop_size} differs from the network's input "
                             f"size {self.image_size}")
        return replace(self, crop_enlarge=preprocessing.enlarge, focal_ratio=preprocessing.focal_ratio,
                       crop_interpolation=preprocessing.interpolation, depth_scaling=preprocessing.depth_rule)

    @classmethod
    def official(cls, num_landmarks: int = 98, num_edges: int = 15) -> "ModelConfig":
        return cls(num_landmarks=num_landmarks, num_edges=num_edges)

    @classmethod
    def sized(cls, size: str, num_landmarks: int, num_edges: int) -> "ModelConfig":
        """A named size: `official` (63M parameters), `small` (12M) or `tiny` (1.7M, 128 px input)."""
        try:
            overrides = MODEL_SIZES[size]
        except KeyError:
            raise SpigaError(f"unknown model size {size!r}; known: {', '.join(MODEL_SIZES)}") from None
        return cls(num_landmarks=num_landmarks, num_edges=num_edges, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """The inverse of `to_dict` (JSON lists become tuples); every field is checked
        for type and bounds (`BOUNDS`), missing fields take the defaults."""
        if not isinstance(data, dict):
            raise SpigaError(f"model configuration must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpigaError(f"model configuration has unknown fields {sorted(map(str, unknown))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def with_landmarks(self, num_landmarks: int, num_edges: int) -> "ModelConfig":
        return replace(self, num_landmarks=num_landmarks, num_edges=num_edges)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _out_of_bounds(config: ModelConfig) -> list[str]:
    """Type and range problems of every field, each naming the field."""
    problems = []
    for name, (low, high) in BOUNDS.items():
        value = getattr(config, name)
        integral = isinstance(low, int)
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
            problems.append(f"{name} must be {'an integer' if integral else 'a number'}, got {_describe(value)}")
        elif not (math.isfinite(value) and low <= value <= high):
            problems.append(f"{name} = {_describe(value)} is outside the supported range {low}..{high}")
    for name in _INTEGER_TUPLES:
        value = getattr(config, name)
        low, high = BOUNDS["channels"] if name == "stem_channels" else HIDDEN_WIDTH
        min_len, max_len = (2, 2) if name == "stem_channels" else HIDDEN_LAYERS
        if not isinstance(value, tuple) or not min_len <= len(value) <= max_len:
            count = "2" if min_len == max_len else f"{min_len} to {max_len}"
            problems.append(f"{name} must be a list of {count} integers, got {_describe(value)}")
        elif any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high for v in value):
            problems.append(f"{name} = {_describe(list(value))}: every width must be an integer in {low}..{high}")
    return problems


MODEL_SIZES: dict[str, dict] = {
    "official": {},
    "small": dict(stem_channels=(32, 64), channels=128, num_stacks=2, embed_dim=256, gat_dim=128,
                  gat_layers=3, shape_hidden=(128, 128), decoder_hidden=(128, 64, 32)),
    # tiny looks at a 128 x 128 crop (a 32 x 32 feature map): fast enough to train on a CPU
    "tiny": dict(image_size=128, hourglass_depth=3, stem_channels=(16, 32), channels=64, num_stacks=2,
                 embed_dim=64, gat_dim=64, gat_layers=2, gat_heads=2, shape_hidden=(64,), decoder_hidden=(64, 32)),
}
