"""Track and smooth the faces of a video (or a webcam): an annotated video and one JSON line
per frame.

    python examples/video_tracking.py clip.mp4 --out tracked.mp4 --jsonl frames.jsonl
    python examples/video_tracking.py 0 --out webcam.mp4         # camera 0, Ctrl-C to stop

The detector runs on the first frame, every `redetect_every` frames and when a face is
lost; between, each face is followed from its landmarks, keeps its id, and its landmarks
and pose are smoothed with a One Euro filter.
"""

import argparse

import spiga
from spiga.video import SmoothingConfig, TrackerConfig, parse_source, run_video


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="video file or camera index")
    parser.add_argument("--model", default="wflw", help="official model name or checkpoint file")
    parser.add_argument("--out", help="annotated video")
    parser.add_argument("--jsonl", help="one JSON line per frame")
    parser.add_argument("--max-frames", type=int)
    args = parser.parse_args(argv)

    model = spiga.load(args.model)
    config = TrackerConfig(redetect_every=15, smoothing=SmoothingConfig.uniform(min_cutoff=0.5, beta=5.0))
    summary = run_video(model, parse_source(args.source), out=args.out, jsonl=args.jsonl, config=config,
                        max_frames=args.max_frames, progress=False)
    print(f"{summary.frames} frames, {summary.faces} faces, {len(summary.ids)} ids, {summary.fps:.1f} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
