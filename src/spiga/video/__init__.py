"""Video: track faces across frames, smooth landmarks and pose, the frame loop.

- `Tracker` / `TrackerConfig` (`tracker`): detect now and then, follow each face's box from
  its landmarks otherwise, keep an `id` per face.
- `OneEuroFilter`, `FaceSmoother`, `SmoothingConfig` (`smoothing`): temporal smoothing.
- `run_video` (`loop`): a video file or camera in, an annotated video and JSON Lines out.
"""

from .loop import VideoSummary, open_capture, parse_source, run_video
from .smoothing import FaceSmoother, OneEuroFilter, OneEuroParams, SmoothingConfig
from .tracker import Tracker, TrackerConfig

__all__ = ["Tracker", "TrackerConfig", "OneEuroFilter", "OneEuroParams", "FaceSmoother", "SmoothingConfig",
           "run_video", "VideoSummary", "open_capture", "parse_source"]
