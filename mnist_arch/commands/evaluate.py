"""Score a trained net again: accuracy, per-class accuracy and the confusion matrix, from the checkpoint alone.

    python -m mnist_arch.evaluate outputs/2026-11-23/10-00-00_s4            # the 10k test set
    python -m mnist_arch.evaluate outputs/.../checkpoints/last.ckpt data.val=holdout

The first argument is a run dir (its tested checkpoint) or a .ckpt file; the rest are `data.*` overrides.
The split the run validated on (data.val, data.holdout_size) comes from the run's own config.yaml when
there is one, and so does where its data lives (data.root) when that folder already holds the four MNIST
files; whether data may be fetched and is verified are this machine's settings and your overrides, never a
run dir's, so a run dir someone handed you cannot make evaluate write anywhere. Writes `evaluate.json`
into the run dir (or beside the checkpoint) by a rename, so a symlink planted there is replaced, not
written through.
"""
import json
from typing import List, Optional

from mnist_arch.cli import Parser, command
from mnist_arch.files import write_atomic
from mnist_arch.inference import trained as trained_nets
from mnist_arch.inference.scoring import data_settings, report, score


@command
def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(prog="python -m mnist_arch.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run dir (its tested checkpoint) or a .ckpt file")
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.val=holdout")
    parser.add_argument("--tta", choices=["none", "shifts"], default="none",
                        help="also score with test-time augmentation (shifts: the image and its four one-pixel "
                             "shifts, averaged), beside the plain score")
    trained_nets.add_trust_option(parser)
    args = parser.parse_args(argv)
    trained = trained_nets.trained_net(args.run, trained_nets.trust_of(args))
    result = score(trained, data_settings(trained.run_dir, args.overrides), args.tta)
    out = trained.out_dir / "evaluate.json"
    write_atomic(out, json.dumps(result, indent=2) + "\n")  # a link planted at evaluate.json is replaced, not followed
    print(f"{report(result)}\nwritten: {out}")


if __name__ == "__main__":
    main()
