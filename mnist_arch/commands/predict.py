"""Read digits with a trained net: pictures of any size and colour, .npy arrays, IDX files.

    python -m mnist_arch.predict outputs/2026-11-23/10-00-00_s4 my_seven.png scan.jpg digits.npy
    python -m mnist_arch.predict outputs/.../checkpoints/last.ckpt t10k-images-idx3-ubyte --json

Each picture is prepared the way MNIST's digits were (mnist_arch/data/digits.py: grayscale, dark-on-light
inverted, cropped to the ink, fitted into 20x20, centred by centre of mass in 28x28). One line per digit:
file, predicted digit, its probability, the runner-up. A file that cannot be read gets one line saying
why, and the others are still read; the exit code is 1 if some files could not be read, 2 if none could
(every file refused: the input, not the work, was wrong).
"""
import json
import sys
import textwrap
from pathlib import Path
from typing import List, Optional

from mnist_arch.cli import Parser, command
from mnist_arch.inference import trained as trained_nets
from mnist_arch.inference.reading import results


@command
def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(prog="python -m mnist_arch.predict", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run dir (its tested checkpoint) or a .ckpt file")
    parser.add_argument("files", nargs="+", type=Path, help="PNG/JPEG/... pictures, .npy arrays, IDX image files")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout instead of lines")
    trained_nets.add_trust_option(parser)
    args = parser.parse_args(argv)
    trained = trained_nets.trained_net(args.run, trained_nets.trust_of(args))

    failed = read = 0
    if args.json:  # one JSON list, written as it goes: 100,000 digits' results are never all held at once
        print("[", end="")
    for n, r in enumerate(results(trained, args.files)):
        failed, read = failed + ("error" in r), read + ("error" not in r)
        if args.json:
            print(("," if n else "") + "\n" + textwrap.indent(json.dumps(r, indent=2), "  "), end="")
        elif "error" in r:  # a file that could not be read: its one line on stderr, in the order given
            print(f"error: {r['error']}", file=sys.stderr, flush=True)
        else:
            print(f"{r['file']}: {r['digit']} (p {r['probability']:.3f}; runner-up {r['runner_up']} "
                  f"p {r['runner_up_probability']:.3f})", flush=True)
    if args.json:
        print("\n]")
    sys.exit(0 if not failed else 1 if read else 2)


if __name__ == "__main__":
    main()
