"""Landmark sets: which points a model predicts and how they relate.

A `LandmarkSet` is everything about a layout that is not learned: the point ids used
by annotation and mean-face files, the left-right mirror order (for flip
augmentation), the edge groups (ordered contours: jaw, brows, eyes, nose, lips) that
drive SPIGA's boundary attention, and which points define the usual normalisations.

Two layouts ship with spiga, with the facts of the original SPIGA release:
`WFLW_98` (98 points, 15 edge groups, pupils 96 and 97 in no group) and `IBUG_68`
(68 points, 13 edge groups; 300W public/private, COFW68 and MERLRAV all use it).
"Right" and "left" are the subject's: the subject's right eye is on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SpigaError


@dataclass(frozen=True)
class LandmarkSet:
    """A landmark layout.

    Attributes:
        name: short identifier (`wflw98`, `ibug68`, or a custom name).
        ids: per point, the id used in mean-face (`id|x|y|z`) and SPIGA-JSON files.
        flip_order: per point, the index of its mirror image under a horizontal flip.
        edge_groups: ordered contours, each a tuple of point indices in drawing order
            (boundary heatmaps join consecutive points; a closing contour such as a
            lower eyelid runs from one eye corner to the other).
        group_names: one name per edge group.
        eye_corners: indices of the outer eye corners (subject's right, left), for NME.
        eyes: index tuples of the (right, left) eye contours, for the `pupils` NME norm.
        point_names: optional per-point names.
    """

    name: str
    ids: tuple[int, ...]
    flip_order: tuple[int, ...]
    edge_groups: tuple[tuple[int, ...], ...]
    group_names: tuple[str, ...]
    eye_corners: tuple[int, int] | None = None
    eyes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    point_names: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        problems = []
        if n < 2:
            problems.append(f"needs at least 2 points, has {n}")
        if len(set(self.ids)) != n:
            problems.append("ids are not unique")
        if sorted(self.flip_order) != list(range(n)):
            problems.append(f"flip_order must be a permutation of 0..{n - 1}")
        elif any(self.flip_order[self.flip_order[i]] != i for i in range(n)):
            problems.append("flip_order must be its own inverse (mirror pairs)")
        if len(self.group_names) != len(self.edge_groups):
            problems.append("group_names and edge_groups differ in length")
        for group in self.edge_groups:
            if not group or any(not 0 <= i < n for i in group):
                problems.append(f"edge group {group} is empty or has an index outside 0..{n - 1}")
        if self.point_names is not None and len(self.point_names) != n:
            problems.append("point_names must have one name per point")
        for pair in [self.eye_corners, *(self.eyes or ())]:
            if pair is not None and any(not 0 <= i < n for i in pair):
                problems.append(f"eye indices {pair} outside 0..{n - 1}")
        if problems:
            raise SpigaError(f"landmark set {self.name!r}: " + "; ".join(problems))

    @property
    def num_landmarks(self) -> int:
        return len(self.ids)

    @property
    def num_edges(self) -> int:
        return len(self.edge_groups)

    def edge_matrix(self) -> np.ndarray:
        """Point-to-edge membership, float32 (L, E + 1).

        Column e is 1 for the points of edge group e; the last column is 1 for the
        points in no group (they are attended by a constant map instead).
        """
        matrix = np.zeros((self.num_landmarks, self.num_edges + 1), np.float32)
        for e, group in enumerate(self.edge_groups):
            matrix[list(group), e] = 1.0
        matrix[matrix[:, :-1].sum(1) == 0, -1] = 1.0
        return matrix

    def part_of_point(self) -> list[str]:
        """Per point, the name of its first edge group (`other` for ungrouped points)."""
        parts = ["other"] * self.num_landmarks
        for name, group in reversed(list(zip(self.group_names, self.edge_groups))):
            for i in group:
                parts[i] = name
        return parts

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ids": list(self.ids),
            "flip_order": list(self.flip_order),
            "edge_groups": [list(g) for g in self.edge_groups],
            "group_names": list(self.group_names),
            "eye_corners": list(self.eye_corners) if self.eye_corners else None,
            "eyes": [list(e) for e in self.eyes] if self.eyes else None,
            "point_names": list(self.point_names) if self.point_names else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LandmarkSet":
        try:
            return cls(
                name=str(data["name"]),
                ids=tuple(int(i) for i in data["ids"]),
                flip_order=tuple(int(i) for i in data["flip_order"]),
                edge_groups=tuple(tuple(int(i) for i in g) for g in data["edge_groups"]),
                group_names=tuple(str(s) for s in data.get("group_names") or
                                  [f"group{i}" for i in range(len(data["edge_groups"]))]),
                eye_corners=tuple(data["eye_corners"]) if data.get("eye_corners") else None,
                eyes=tuple(tuple(int(i) for i in e) for e in data["eyes"]) if data.get("eyes") else None,
                point_names=tuple(data["point_names"]) if data.get("point_names") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpigaError(f"landmark set description is malformed: {exc!r}") from None


def _mirror(pairs: list[tuple[int, int]], n: int) -> tuple[int, ...]:
    order = list(range(n))
    for a, b in pairs:
        order[a], order[b] = b, a
    return tuple(order)


def _reversed_run(first: int, last: int) -> list[tuple[int, int]]:
    """Mirror pairs of a contour whose mirror image is itself reversed (jaw, ...)."""
    span = list(range(first, last + 1))
    return [(a, b) for a, b in zip(span, reversed(span)) if a < b]


# WFLW: 33 jaw points, brows with upper and lower contours, 4 + 5 nose, 8 per eye,
# 12 + 8 mouth, 2 pupils. Ids as in the original release's mean face file.
_WFLW_IDS = (
    *range(100, 116), 24, *range(117, 133), 1, 134, 2, 136, 3, 138, 139, 140, 141, 4, 143, 5,
    145, 6, *range(147, 154), 17, 16, 156, 157, 158, 18, 7, 161, 9, 163, 8, 165, 10, 167, 11,
    169, 13, 171, 12, 173, 14, 175, 20, 177, 178, 22, 180, 181, 21, 183, 184, 23,
    *range(186, 198),
)
_WFLW_PAIRS = (
    _reversed_run(0, 32)
    + [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47)]
    + [(55, 59), (56, 58)]
    + [(60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73)]
    + [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95), (96, 97)]
)
WFLW_98 = LandmarkSet(
    name="wflw98",
    ids=_WFLW_IDS,
    flip_order=_mirror(_WFLW_PAIRS, 98),
    edge_groups=(
        tuple(range(0, 33)),
        (33, 34, 35, 36, 37), (33, 41, 40, 39, 38),
        (42, 43, 44, 45, 46), (46, 47, 48, 49, 50),
        (51, 52, 53, 54), (55, 56, 57, 58, 59),
        (60, 61, 62, 63, 64), (60, 67, 66, 65, 64),
        (68, 69, 70, 71, 72), (68, 75, 74, 73, 72),
        (76, 77, 78, 79, 80, 81, 82), (76, 87, 86, 85, 84, 83, 82),
        (88, 89, 90, 91, 92), (88, 95, 94, 93, 92),
    ),
    group_names=(
        "jaw", "right_brow_upper", "right_brow_lower", "left_brow_upper", "left_brow_lower",
        "nose_bridge", "nose_base", "right_eye_upper", "right_eye_lower", "left_eye_upper",
        "left_eye_lower", "outer_lip_upper", "outer_lip_lower", "inner_lip_upper",
        "inner_lip_lower",
    ),
    eye_corners=(60, 72),
    eyes=(tuple(range(60, 68)), tuple(range(68, 76))),
)

_IBUG_IDS = (
    *range(101, 109), 24, *range(110, 118), 1, 119, 2, 121, 3, 4, 124, 5, 126, 6, 128, 129, 130,
    17, 16, 133, 134, 135, 18, 7, 138, 139, 8, 141, 142, 11, 144, 145, 12, 147, 148, 20, 150, 151,
    22, 153, 154, 21, 156, 157, 23, *range(159, 169),
)
_IBUG_PAIRS = (
    _reversed_run(0, 16) + _reversed_run(17, 26) + [(31, 35), (32, 34)]
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + _reversed_run(48, 54) + _reversed_run(55, 59) + _reversed_run(60, 64) + [(65, 67)]
)
IBUG_68 = LandmarkSet(
    name="ibug68",
    ids=_IBUG_IDS,
    flip_order=_mirror(_IBUG_PAIRS, 68),
    edge_groups=(
        tuple(range(0, 17)),
        (17, 18, 19, 20, 21), (22, 23, 24, 25, 26),
        (27, 28, 29, 30), (31, 32, 33, 34, 35),
        (36, 37, 38, 39), (36, 41, 40, 39),
        (42, 43, 44, 45), (42, 47, 46, 45),
        (48, 49, 50, 51, 52, 53, 54), (48, 59, 58, 57, 56, 55, 54),
        (60, 61, 62, 63, 64), (60, 67, 66, 65, 64),
    ),
    group_names=(
        "jaw", "right_brow", "left_brow", "nose_bridge", "nose_base", "right_eye_upper",
        "right_eye_lower", "left_eye_upper", "left_eye_lower", "outer_lip_upper",
        "outer_lip_lower", "inner_lip_upper", "inner_lip_lower",
    ),
    eye_corners=(36, 45),
    eyes=(tuple(range(36, 42)), tuple(range(42, 48))),
)

#: The official configurations of the original release and their landmark layouts.
DATASET_LANDMARKS: dict[str, LandmarkSet] = {
    "wflw": WFLW_98,
    "300wpublic": IBUG_68,
    "300wprivate": IBUG_68,
    "merlrav": IBUG_68,
    "cofw68": IBUG_68,
}


def landmark_set_for(config: str) -> LandmarkSet:
    """The landmark set of an official configuration name (`wflw`, `300wpublic`, ...)."""
    try:
        return DATASET_LANDMARKS[config]
    except KeyError:
        known = ", ".join(sorted(DATASET_LANDMARKS))
        raise SpigaError(f"unknown configuration {config!r}; known: {known}") from None
