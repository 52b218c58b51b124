"""Adapt a trained model to a new domain (thermal faces, say) on your own annotated folder:
the CNN and the pose head stay as they are, only the GAT cascade learns.

    python examples/finetune_cascade.py --init wflw --train faces.jsonl --landmark-set wflw98 \
        --out runs/thermal --steps 2000

`faces.jsonl` is spiga's custom format, one face per line, images relative to the file:

    {"image": "img/0001.png", "landmarks": [[x, y], ...], "box": [x, y, w, h]}

16-bit images (radiometric thermal) are read as they are; see the documentation's
fine-tuning walkthrough. Training resumes where it stopped with `spiga train --resume DIR`.
"""

import argparse

from spiga.train import TrainConfig, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default="wflw", help="the model to start from (name or checkpoint)")
    parser.add_argument("--train", required=True, help="custom-format annotations (.jsonl or .csv)")
    parser.add_argument("--val", help="validation annotations (optional)")
    parser.add_argument("--landmark-set", required=True, help="wflw98, ibug68 or a landmark-set file")
    parser.add_argument("--out", default="runs/finetune")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    args = parser.parse_args(argv)

    config = TrainConfig(
        init=args.init,
        train=[f"custom:{args.train}"],
        val=[f"custom:{args.val}"] if args.val else [],
        landmark_set=args.landmark_set,
        stage="3",  # stage 3: the cascade learns; the CNN and the pose head are frozen
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        out=args.out,
        device=args.device,
        loader_workers=args.workers,
    )
    result = train(config)
    print(f"trained {result.steps} steps; the model is {result.out / 'last.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
