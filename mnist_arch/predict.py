"""Read digits with a trained net: pictures of any size and colour, .npy arrays, IDX files.

    python -m mnist_arch.predict outputs/2026-11-23/10-00-00_s4 my_seven.png scan.jpg digits.npy
    python -m mnist_arch.predict outputs/.../checkpoints/last.ckpt t10k-images-idx3-ubyte --json

Each picture is prepared the way MNIST's digits were (mnist_arch/data/digits.py: grayscale, dark-on-light
inverted, cropped to the ink, fitted into 20x20, centred by centre of mass in 28x28). One line per digit:
file, predicted digit, its probability, the runner-up. A file that cannot be read gets one line saying
why, and the others are still read; the exit code is 1 if any file could not be read.
"""
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch

from mnist_arch.cli import Parser, command
from mnist_arch.errors import BadFile

@command
def main(argv: Optional[List[str]] = None) -> None:
    from mnist_arch import trained as trained_nets
    from mnist_arch.data.digits import read

    parser = Parser(prog="python -m mnist_arch.predict", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run dir (its tested checkpoint) or a .ckpt file")
    parser.add_argument("files", nargs="+", type=Path, help="PNG/JPEG/... pictures, .npy arrays, IDX image files")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout instead of lines")
    trained_nets.add_trust_option(parser)
    args = parser.parse_args(argv)
    trained = trained_nets.load(args.run, args.trust_target)

    results, failed = [], 0
    for path in args.files:
        try:
            digits = read(path)
        except BadFile as e:
            failed += 1
            results.append({"file": str(path), "error": str(e)})
            continue
        probabilities = trained.probabilities(torch.stack([image for _, image in digits]).unsqueeze(1))
        for (name, _), p in zip(digits, probabilities):
            top = p.topk(2)
            results.append({"file": str(path.parent / name), "digit": int(top.indices[0]),
                            "probability": round(float(top.values[0]), 4), "runner_up": int(top.indices[1]),
                            "runner_up_probability": round(float(top.values[1]), 4),
                            "probabilities": [round(float(q), 6) for q in p]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:  # a file that could not be read: its one line on stderr, in the order given
            if "error" in r:
                print(f"error: {r['error']}", file=sys.stderr, flush=True)
            else:
                print(f"{r['file']}: {r['digit']} (p {r['probability']:.3f}; runner-up {r['runner_up']} "
                      f"p {r['runner_up_probability']:.3f})", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
